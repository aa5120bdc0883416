"""What one benchmark measurement is: a typed description that crosses process boundaries as JSON.

A measurement runs in a fresh interpreter (see ``step.run_isolated``), so its description must be plain
data; a dataclass keeps the field names checked by Python instead of spelled as dictionary keys.
"""

from dataclasses import asdict, dataclass, field, replace

from .numerics import ATTENTIONS, PRECISIONS

__all__ = ["ATTENTIONS", "PAPER_WAYS", "PRECISIONS", "WAYS", "StepSpec"]

# The ways of training one model; the values are config overrides.
WAYS = {
    "reversible": ["MVIT.REV.ENABLE", "True", "MODEL.ACT_CHECKPOINT", "False"],
    "non_reversible": ["MVIT.REV.ENABLE", "False", "MODEL.ACT_CHECKPOINT", "False"],
    "act_checkpoint": ["MVIT.REV.ENABLE", "False", "MODEL.ACT_CHECKPOINT", "True"],
    # Rev-MViT with its (non-reversible) stage transitions checkpointed; for Rev-ViT, which has no
    # transitions, the same model as "reversible"
    "rev_act_checkpoint": ["MVIT.REV.ENABLE", "True", "MODEL.ACT_CHECKPOINT", "True"],
}
# What the tables measure unless told otherwise: the paper's comparison and checkpointing of the twin
PAPER_WAYS = ("reversible", "non_reversible", "act_checkpoint")


@dataclass(frozen=True)
class StepSpec:
    """One measurement: a model (config file + overrides) trained one way at one batch.

    ``steps`` training steps are timed after ``warmup`` untimed ones (the first step allocates one-off
    buffers, e.g. kernel caches, that would otherwise land in one peak and not in another).
    ``set_to_none`` frees gradients between steps (revvit's trainer) instead of keeping them zeroed (the
    steady state then holds no gradients and every step allocates them). ``saved`` also counts the bytes
    autograd keeps for backward after one more forward.
    """

    config: str = None
    opts: tuple = ()
    way: str = "reversible"
    batch_size: int = 2
    steps: int = 1
    warmup: int = 1
    threads: int = None
    device: str = "cpu"
    seed: int = 0
    saved: bool = False
    set_to_none: bool = False
    precision: str = "fp32"
    attention: str = "fused"
    extra: dict = field(default_factory=dict, compare=False)  # labels carried into the result untouched

    def __post_init__(self):
        if self.way not in WAYS:
            raise ValueError(f"unknown way '{self.way}'; choose from {', '.join(WAYS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{self.precision}'; choose from {', '.join(PRECISIONS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"unknown attention '{self.attention}'; choose from {', '.join(ATTENTIONS)}")
        object.__setattr__(self, "opts", tuple(str(o) for o in self.opts))

    def replace(self, **changes):
        return replace(self, **changes)

    def to_json(self):
        d = asdict(self)
        d["opts"] = list(self.opts)
        return d

    @classmethod
    def from_json(cls, d):
        return cls(**d)
