"""Memory and speed of a training step: reversible vs non-reversible vs activation checkpointing.

Reversible training exists to save activation memory, so its claim has to be measured on the
machine at hand, not asserted. One *measurement* builds one model in one way, runs full training
steps (forward, backward, AdamW step) on random data and reports step time, throughput, peak memory
and the bytes autograd keeps for backward. Every measurement runs in a fresh interpreter
(``run_isolated``): peak resident memory cannot be shared between models, and memory that the C
allocator keeps after one model is freed would otherwise hide the next model's peak.

Memory accounting (the same on every device):

* ``start``: before the model is built (interpreter + torch).
* ``base``: after the model, its gradients and the AdamW state exist (one optimizer step on zero
  gradients allocates the state), i.e. the steady state between two training steps.
* ``peak``: the highest point during the measured steps.

``step_bytes = peak - base`` is what one training step needs on top of the steady state
(activations, buffers of backward); ``total_bytes = peak - start`` adds model, gradients and
optimizer state and is what a memory budget (``max_batch``) must cover. On CUDA these are the
caching allocator's allocated bytes; on CPU the process's resident set, whose high-water mark is
reset after ``base`` (``/proc/self/clear_refs``), so the peak belongs to the steps alone.
"""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from revvit.config import get_cfg, merge_file, merge_opts
from revvit.utils.model_stats import input_shape

__all__ = [
    "WAYS",
    "PUBLISHED_CONFIGS",
    "build_cfg",
    "measure",
    "run_isolated",
    "measure_point",
    "interleaved_step_times",
    "saved_bytes",
    "max_batch",
    "machine_info",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

# The three ways of training one width and depth; the values are config overrides.
WAYS = {
    "reversible": ["MVIT.REV.ENABLE", "True", "MODEL.ACT_CHECKPOINT", "False"],
    "non_reversible": ["MVIT.REV.ENABLE", "False", "MODEL.ACT_CHECKPOINT", "False"],
    "act_checkpoint": ["MVIT.REV.ENABLE", "False", "MODEL.ACT_CHECKPOINT", "True"],
}

# The four published reversible models (paths relative to the repository) and any overrides they
# need; their non-reversible twins are the same files under the "non_reversible" way.
PUBLISHED_CONFIGS = [
    ("configs/ImageNet/REV_VIT_S.yaml", []),
    ("configs/ImageNet/REV_VIT_B.yaml", []),
    ("configs/ImageNet/REV_MVIT_B_16_CONV.yaml", []),
    ("configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml", []),
]


# -------------------------------------------------------------------------------------------------
# Config.
# -------------------------------------------------------------------------------------------------
def resolve_config(path):
    """``path`` as given, or relative to the repository root (so the defaults work from anywhere)."""
    p = Path(path)
    if p.is_file():
        return str(p)
    if not p.is_absolute() and (REPO_ROOT / p).is_file():
        return str(REPO_ROOT / p)
    raise FileNotFoundError(f"benchmark config '{path}' not found (looked in the working directory and {REPO_ROOT})")


def build_cfg(config, opts, way, batch_size):
    """The config of one measurement: file <- opts <- the way's overrides <- a one-process batch."""
    if way not in WAYS:
        raise ValueError(f"unknown way '{way}'; choose from {', '.join(WAYS)}")
    cfg = get_cfg()
    if config:
        merge_file(cfg, resolve_config(config))
    merge_opts(cfg, list(opts))
    merge_opts(cfg, WAYS[way])
    merge_opts(cfg, ["NUM_GPUS", "1", "NUM_SHARDS", "1", "SHARD_ID", "0", "TRAIN.BATCH_SIZE", str(batch_size)])
    cfg.DATA.TEST_CROP_SIZE = cfg.DATA.TRAIN_CROP_SIZE
    return cfg


# -------------------------------------------------------------------------------------------------
# Memory probes.
# -------------------------------------------------------------------------------------------------
def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class _CPUMemory:
    """Resident set size and its high-water mark, resettable through /proc/self/clear_refs (Linux)."""

    def __init__(self):
        try:
            self.reset_peak()
            _proc_status_kb("VmHWM")
        except OSError as e:
            raise RuntimeError(
                "CPU peak memory needs Linux /proc/self/clear_refs and /proc/self/status "
                f"(resetting the resident high-water mark failed: {e}); run the benchmark on Linux or CUDA"
            ) from e

    def current(self):
        return _proc_status_kb("VmRSS")

    def reset_peak(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def peak(self):
        return _proc_status_kb("VmHWM")


class _CUDAMemory:
    def __init__(self, device):
        self.device = device

    def current(self):
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self):
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


class _LiveStorages(TorchDispatchMode):
    """Remembers (weakly) every storage an op produces, to see which ones outlive the forward."""

    def __init__(self):
        super().__init__()
        self.storages = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                s = t.untyped_storage()
                known = self.storages.get(s.data_ptr())
                if known is None or known[0]() is None:  # new, or an address reused after a free
                    self.storages[s.data_ptr()] = (weakref.ref(s), s.nbytes())
        return out


def saved_bytes(model, inputs, labels):
    """Bytes held for backward after one training forward: ``(kept, saved_by_hooks)``.

    ``kept``: storages created by the forward that are still alive when only the loss is
    referenced, i.e. held by the autograd graph, whatever holds them (saved tensors, the input a
    checkpointed region keeps for its recomputation, RevBackProp's saved outputs). ``saved_by_hooks``:
    unique storages passed to autograd's saved-tensor hooks, parameters and the input excluded;
    regions under activation checkpointing install their own hooks and are invisible to it.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    hooked = {}

    def pack(t):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in param_ptrs and ptr != inputs[0].untyped_storage().data_ptr():
            hooked[ptr] = s.nbytes()
        return t

    mode = _LiveStorages()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    loss_ptr = loss.untyped_storage().data_ptr()
    kept = sum(
        n for ptr, (ref, n) in mode.storages.items() if ref() is not None and ptr not in param_ptrs and ptr != loss_ptr
    )
    del loss
    return kept, sum(hooked.values())


# -------------------------------------------------------------------------------------------------
# One measurement (runs in the current process; use run_isolated for comparable memory).
# -------------------------------------------------------------------------------------------------
def _random_batch(cfg, batch_size, device):
    x = torch.randn(input_shape(cfg, batch_size), device=device)
    y = torch.randint(0, cfg.MODEL.NUM_CLASSES, (batch_size,), device=device)
    return [x], y


def measure(spec):
    """Run the training steps of ``spec`` and return the numbers (a JSON-able dict).

    ``spec`` keys: config (path or None), opts (list), way, batch_size, steps (timed), warmup,
    threads, device, seed, saved (bool: also count the bytes kept for backward), set_to_none (bool:
    gradients freed between steps, as revvit's trainer does, instead of kept and zeroed; then the
    steady state holds no gradients and every step allocates them).
    """
    from revvit.models import build_model
    from revvit.utils.model_stats import params_count

    device = torch.device(spec.get("device", "cpu"))
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    torch.manual_seed(int(spec.get("seed", 0)))
    batch = int(spec["batch_size"])
    cfg = build_cfg(spec.get("config"), spec.get("opts", []), spec["way"], batch)
    memory = _CUDAMemory(device) if device.type == "cuda" else _CPUMemory()

    mem_start = memory.current()
    model = build_model(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    # Steady state between steps: gradients allocated (kept, zeroed) and the AdamW moments created.
    set_to_none = bool(spec.get("set_to_none", False))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=set_to_none)
    inputs, labels = _random_batch(cfg, batch, device)
    mem_base = memory.current()
    memory.reset_peak()

    phase_peaks = {"forward": 0, "backward": 0, "optimizer": 0}

    def phase_end(name):
        # Peak of one phase over the steady state; the overall peak is the largest of them.
        phase_peaks[name] = max(phase_peaks[name], memory.peak() - mem_base)
        memory.reset_peak()

    def step():
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        phase_end("forward")
        loss.backward()
        phase_end("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=set_to_none)
        phase_end("optimizer")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss.item()

    times, cpu_times, losses = [], [], []
    for i in range(int(spec.get("warmup", 1)) + int(spec.get("steps", 3))):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        if i >= int(spec.get("warmup", 1)):
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    mem_peak = mem_base + max(phase_peaks.values())
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"non-finite loss in benchmark steps: {losses}")

    result = {
        "config": spec.get("config"),
        "opts": list(spec.get("opts", [])),
        "way": spec["way"],
        "batch_size": batch,
        "depth": cfg.MVIT.DEPTH,
        "crop_size": cfg.DATA.TRAIN_CROP_SIZE,
        "num_frames": None if cfg.MVIT.PATCH_2D else cfg.DATA.NUM_FRAMES,
        "params": params_count(model),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps": len(times),
        "warmup": int(spec.get("warmup", 1)),
        "grads_set_to_none": set_to_none,
        "step_times_s": times,
        "step_time_s": statistics.median(times) if times else None,
        "samples_per_s": batch / statistics.median(times) if times else None,
        # CPU seconds of the whole process (all threads): less sensitive than wall time to other
        # processes competing for the cores; on CUDA it only measures the host side.
        "step_cpu_times_s": cpu_times,
        "step_cpu_time_s": statistics.median(cpu_times) if cpu_times else None,
        "mem_start_bytes": mem_start,
        "mem_base_bytes": mem_base,
        "mem_peak_bytes": mem_peak,
        "model_state_bytes": mem_base - mem_start,
        "step_bytes": mem_peak - mem_base,
        "total_bytes": mem_peak - mem_start,
        "step_bytes_per_sample": (mem_peak - mem_base) / batch,
        "phase_peak_bytes": phase_peaks,
    }
    if spec.get("saved", True):
        kept, hooked = saved_bytes(model, inputs, labels)
        result.update(
            saved_bytes=kept,
            saved_bytes_per_sample=kept / batch,
            saved_bytes_hooks=hooked,
            saved_bytes_hooks_per_sample=hooked / batch,
        )
    return result


# -------------------------------------------------------------------------------------------------
# Fresh processes.
# -------------------------------------------------------------------------------------------------
_RESULT_TAG = "REVVIT_BENCHMARK_RESULT "


def run_isolated(spec, timeout=None):
    """``measure(spec)`` in a fresh Python process; returns its result dict.

    A failure in the child (e.g. killed when out of memory) is returned as ``{"error": ...}`` so
    that a maximum-batch search can treat it as "does not fit".
    """
    code = "from revvit.engine.benchmark import _child_main; _child_main()"
    env = dict(os.environ)
    if spec.get("device", "cpu") == "cpu":
        # glibc keeps freed blocks below its (self-raising, up to 32 MiB) mmap threshold in the
        # heap, so resident memory would show what the allocator hoards, not what the step needs.
        # A fixed threshold returns every tensor-sized block to the system when it is freed.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", **_spec_summary(spec)}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):])
    tail = (proc.stderr or "").strip().splitlines()[-5:]
    return {"error": f"exit code {proc.returncode}: " + " | ".join(tail), **_spec_summary(spec)}


def _spec_summary(spec):
    return {k: spec.get(k) for k in ("config", "opts", "way", "batch_size")}


def _child_main():
    spec = json.loads(sys.stdin.read())
    result = measure(spec)
    sys.stdout.write(_RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


# -------------------------------------------------------------------------------------------------
# Step-time ratios on a busy machine.
# -------------------------------------------------------------------------------------------------
def interleaved_step_times(specs, rounds=5, warmup=1, threads=1, log=None):
    """Step times of several ways measured in one process, one step of each way per round.

    On a machine shared with other jobs the speed available drifts by more than the 4/3 being
    measured; separate processes run minutes apart see different machines. Alternating the ways
    step by step exposes them to the same drift, and the per-round ratio cancels most of it. With
    one thread the process CPU time is the work done, nearly independent of the competition.
    Memory is not measured here (the models share a process). Returns, per way, the wall and
    CPU step times of every round and their medians, and the per-round ratios to the first way.
    """
    torch.set_num_threads(threads)
    runs = []
    for spec in specs:
        torch.manual_seed(int(spec.get("seed", 0)))
        cfg = build_cfg(spec.get("config"), spec.get("opts", []), spec["way"], int(spec["batch_size"]))
        from revvit.models import build_model

        model = build_model(cfg).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        inputs, labels = _random_batch(cfg, int(spec["batch_size"]), torch.device("cpu"))
        runs.append((spec, model, optimizer, inputs, labels))

    def step(model, optimizer, inputs, labels):
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    wall = [[] for _ in runs]
    cpu = [[] for _ in runs]
    for r in range(warmup + rounds):
        for i, (spec, *state) in enumerate(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            step(*state)
            if r >= warmup:
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
        if log and r >= warmup:
            log("  round " + ", ".join(f"{s['way']} {cpu[i][-1]:.2f} s cpu" for i, (s, *_) in enumerate(runs)))
    out = {"threads": threads, "rounds": rounds, "ways": {}}
    for i, (spec, *_) in enumerate(runs):
        out["ways"][spec["way"]] = {
            "config": spec.get("config"),
            "opts": list(spec.get("opts", [])),
            "batch_size": int(spec["batch_size"]),
            "step_times_s": wall[i],
            "step_cpu_times_s": cpu[i],
            "step_time_s": statistics.median(wall[i]),
            "step_cpu_time_s": statistics.median(cpu[i]),
            "cpu_ratio_to_first_per_round": [c / c0 for c, c0 in zip(cpu[i], cpu[0])],
            "cpu_ratio_to_first": statistics.median(c / c0 for c, c0 in zip(cpu[i], cpu[0])),
            "wall_ratio_to_first": statistics.median(w / w0 for w, w0 in zip(wall[i], wall[0])),
        }
    return out


# -------------------------------------------------------------------------------------------------
# Memory per sample, free of the batch-independent part.
# -------------------------------------------------------------------------------------------------
def measure_point(spec, small_batch=None, timeout=None):
    """``run_isolated(spec)`` plus the step memory that each extra sample adds.

    ``step_bytes / batch`` still holds batch-independent terms (buffers the size of the
    parameters, allocator slack) that dominate at the small batches a CPU can afford. A second,
    one-step run at ``small_batch`` gives the slope ``activation_bytes_per_sample``: what a
    sample costs at any batch, the quantity the paper's "memory per image" approaches at its
    large batches.
    """
    result = run_isolated(spec, timeout=timeout)
    if "error" in result or not small_batch or small_batch >= spec["batch_size"]:
        return result
    # Same warm-up as the main run: the first step also allocates one-off buffers (kernel caches),
    # which would otherwise land in one peak and not the other.
    small = run_isolated(dict(spec, batch_size=small_batch, steps=1, saved=False), timeout=timeout)
    if "error" in small:
        result["small_batch_error"] = small["error"]
        return result
    slope = (result["step_bytes"] - small["step_bytes"]) / (spec["batch_size"] - small_batch)
    result.update(
        small_batch_size=small_batch,
        small_batch_step_bytes=small["step_bytes"],
        activation_bytes_per_sample=slope,
        fixed_step_bytes=result["step_bytes"] - slope * spec["batch_size"],
    )
    return result


# -------------------------------------------------------------------------------------------------
# Maximum batch under a budget.
# -------------------------------------------------------------------------------------------------
def max_batch(spec, budget_bytes, limit=4096, timeout=None, log=None):
    """Largest batch whose training step fits ``budget_bytes`` of ``total_bytes`` (model included).

    Every trial is one training step in a fresh process; a trial that crashes (out of memory)
    counts as not fitting. Memory grows linearly with the batch, so after two small trials the
    next candidate is the line's prediction, kept strictly between the largest batch known to fit
    and the smallest known not to (bisection when the prediction does not help). A CPU step on a
    batch of hundreds takes minutes, so this needs a handful of trials where doubling and
    bisection need a dozen. Returns ``(best_batch, trials)``; best is 0 if one sample does not fit.
    """
    trials, points = [], {}

    def fits(batch):
        trial = dict(spec, batch_size=batch, warmup=0, steps=1, saved=False)
        r = run_isolated(trial, timeout=timeout)
        ok = "error" not in r and r["total_bytes"] <= budget_bytes
        if "error" not in r:
            points[batch] = r["total_bytes"]
        trials.append({"batch_size": batch, "fits": ok, "total_bytes": r.get("total_bytes"), "error": r.get("error")})
        if log:
            log(f"  max-batch {spec['way']}: batch {batch} -> {r.get('total_bytes', r.get('error'))} ({'fits' if ok else 'too big'})")
        return ok

    def predicted():
        if len(points) < 2:
            return None
        (b0, m0), (b1, m1) = _bracketing(points, budget_bytes)
        slope = (m1 - m0) / (b1 - b0)
        return None if slope <= 0 else int(b1 + (budget_bytes - m1) // slope)

    if not fits(1):
        return 0, trials
    low, high = 1, None
    candidate = min(4, limit)
    while (high is None or high - low > 1) and low < limit:
        if candidate is None or candidate <= low or (high is not None and candidate >= high):
            candidate = (low + high) // 2 if high is not None else min(2 * low, limit)
        if fits(candidate):
            low = candidate
        else:
            high = candidate
        guess = predicted()
        if guess is not None:
            guess = min(guess, limit)
            # Probe just beyond a fitting guess so that the boundary is confirmed from both sides.
            candidate = guess + 1 if guess == low else guess
        else:
            candidate = None
    return low, trials


def _bracketing(points, budget):
    """The two measured (batch, bytes) points closest to the budget, for the secant."""
    ranked = sorted(points.items(), key=lambda bm: abs(bm[1] - budget))[:2]
    return sorted(ranked)


# -------------------------------------------------------------------------------------------------
# Machine.
# -------------------------------------------------------------------------------------------------
def machine_info(device="cpu"):
    """What the numbers were measured on, so results from other machines can be compared."""
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    try:
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# -------------------------------------------------------------------------------------------------
# The whole benchmark.
# -------------------------------------------------------------------------------------------------
def run_benchmark(settings, log=print, save=None):
    """Run the parts ``settings`` asks for and return everything as one JSON-able dict.

    ``settings`` keys: configs ([(path, opts)]), opts (applied to every config), ways, batch_size,
    steps, warmup, threads, device, sweep (bool), sweep_config, sweep_opts, sweep_depths,
    sweep_crop, sweep_batch, sweep_small_batch, max_batch_bytes (None: skip), max_batch_limit,
    timeout, isolated (default True: each measurement in its own process; False measures in this
    process, quicker for smoke runs but memory peaks then mix). ``save(results)``, when given, is
    called after every measurement with the results so far: a run of hours stopped half-way keeps
    what it measured.
    """
    from .benchmark_report import config_ratios, sweep_ratios, targets

    s = settings
    run = run_isolated if s.get("isolated", True) else _run_here
    threads = int(s.get("threads") or torch.get_num_threads())
    common = dict(steps=s["steps"], warmup=s["warmup"], threads=threads, device=s["device"], set_to_none=bool(s.get("set_to_none")))
    out = {"machine": machine_info(s["device"]), "settings": dict(s, threads=threads)}
    out["machine"]["threads"] = threads

    if s.get("configs"):
        out["configs"] = []
        for path, extra in s["configs"]:
            for way in s["ways"]:
                spec = dict(common, config=path, opts=list(extra) + list(s.get("opts", [])), way=way, batch_size=s["batch_size"])
                log(f"[configs] {path} {way} batch {s['batch_size']}")
                r = run(spec, timeout=s.get("timeout"))
                _log_result(log, r)
                out["configs"].append(r)
                if save:
                    save(out)
        out["config_ratios"] = config_ratios(out["configs"])

    if s.get("sweep"):
        results = []
        for depth in s["sweep_depths"]:
            opts = list(s.get("sweep_opts", [])) + [
                "MVIT.DEPTH", str(depth), "DATA.TRAIN_CROP_SIZE", str(s["sweep_crop"]),
            ]
            for way in s["ways"]:
                spec = dict(common, config=s["sweep_config"], opts=opts, way=way, batch_size=s["sweep_batch"])
                log(f"[sweep] depth {depth} {way} batch {s['sweep_batch']} (+{s['sweep_small_batch']})")
                r = measure_point(spec, small_batch=s["sweep_small_batch"], timeout=s.get("timeout"))
                r.setdefault("depth", depth)
                _log_result(log, r)
                results.append(r)
                if save:
                    save(dict(out, depth_sweep={"partial": True, "results": results}))
        ratios = sweep_ratios(results)
        out["depth_sweep"] = {
            "config": s["sweep_config"],
            "crop_size": s["sweep_crop"],
            "batch_size": s["sweep_batch"],
            "small_batch_size": s["sweep_small_batch"],
            "results": results,
            "ratios": ratios,
            "targets": targets(ratios),
        }

    if s.get("max_batch_bytes"):
        out["max_batch"] = []
        for path, extra in s.get("max_batch_configs") or s["configs"]:
            for way in s["ways"]:
                spec = dict(common, config=path, opts=list(extra) + list(s.get("opts", [])), way=way)
                log(f"[max-batch] {path} {way} budget {s['max_batch_bytes']} bytes")
                best, trials = max_batch(spec, s["max_batch_bytes"], limit=s.get("max_batch_limit", 4096), timeout=s.get("timeout"), log=log)
                out["max_batch"].append(
                    {"config": path, "opts": spec["opts"], "way": way, "budget_bytes": s["max_batch_bytes"], "max_batch": best, "trials": trials}
                )
    return out


def _run_here(spec, timeout=None):
    return measure(spec)


def _log_result(log, r):
    if "error" in r:
        log(f"    failed: {r['error']}")
        return
    parts = [
        f"step {r['step_time_s']:.2f} s (cpu {r['step_cpu_time_s']:.2f} s)" if r.get("step_time_s") else "",
        f"step memory {r['step_bytes'] / 2**20:.1f} MiB",
        f"saved/sample {r['saved_bytes_per_sample'] / 2**20:.2f} MiB" if "saved_bytes_per_sample" in r else "",
        f"activation/sample {r['activation_bytes_per_sample'] / 2**20:.2f} MiB" if "activation_bytes_per_sample" in r else "",
    ]
    log("    " + ", ".join(p for p in parts if p))
