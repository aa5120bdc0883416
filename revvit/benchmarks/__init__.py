"""Benchmarks of training: memory and speed of reversible vs non-reversible vs activation checkpointing,
the paper's memory-per-image table, and how fast the data pipelines feed a model.

    settings       StepSpec (one measurement) and WAYS
    numerics       precision (fp32, bf16) and attention kernel (fused, math) of a step; CUDA-event step times
    probes         memory counters (resident set on CPU, allocator on CUDA), bytes kept for backward
    step           one measured training step, here or in a fresh process
    memory_table   memory per image as the slope of the backward's peak, the paper's table
    slopes         the table's arithmetic on measured points (no torch: reports import it)
    search         the largest batch under a memory budget, by measurement
    timing         step-time ratios of the ways, interleaved in one process
    depth_sweep    memory and time against depth at one width
    data           clips (images) per second one data-loader worker produces, from the shipped configs
    accuracy       the accuracy claim: reversible vs twin test top-1 over seeds on the demo data
    report         markdown tables and plots of the results (no measuring)
"""
