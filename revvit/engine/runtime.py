"""A process's start of a run (``build_run``, where train() and evaluate() both begin): output dir,
logging, seed, math modes and the model on its device."""

from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.model_stats import gflops, params_count
from revvit.utils.seeding import seed_all

from .precision import set_math_modes
from .run_dir import describe_changes, prepare_output_dir, record_config

logger = logging.get_logger(__name__)

__all__ = ["build_run", "log_model_info"]


def log_model_info(model, cfg):
    """Parameters and GFLOPs of one input, in the units papers use (rank 0 only)."""
    if not (cfg.LOG_MODEL_INFO and du.is_master_proc()):
        return None
    params = params_count(model)
    try:
        flops = gflops(model, cfg)
    except Exception as e:  # a FLOP counter failure must not stop training; say why it is missing
        logger.warning(f"GFLOPs not measured ({type(e).__name__}: {e})")
        flops = None
    logger.info(f"Model {cfg.MODEL.MODEL_NAME}: {params:,} parameters" + (f", {flops:.4g} GFLOPs per input" if flops is not None else ""))
    return {"params": params, "gflops": flops}


def build_run(cfg, config_name="config.yaml"):
    """Output dir, logging, seed and the model on its device; shared by train() and evaluate().

    ``config_name``: where rank 0 records the config. A test-only run writes ``config_test.yaml``
    so that it never overwrites the ``config.yaml`` of the training run in the same OUTPUT_DIR; a
    different config of the same name is kept beside it (``run_dir.record_config``).
    """
    from revvit.models import build_model

    if du.is_master_proc():
        prepare_output_dir(cfg.OUTPUT_DIR)
    logging.setup_logging(cfg.OUTPUT_DIR, iter_stats_stdout=cfg.LOG_ITER_STATS_STDOUT)
    if du.is_master_proc():
        kept, changes = record_config(cfg.OUTPUT_DIR, config_name, cfg.dump())
        if kept is not None:
            logger.info(f"Kept the previous {config_name} as {kept}; this run's config differs in {describe_changes(changes)}")
        logger.info(f"Output in {cfg.OUTPUT_DIR}: {config_name}, stdout.log, json_stats.log, checkpoints/")
    seed_all(cfg.RNG_SEED)
    set_math_modes(cfg)
    device = du.get_device(cfg)
    model = build_model(cfg).to(device)
    log_model_info(model, cfg)
    return model, device
