"""The paper's second claim: a reversible model reaches the accuracy of its non-reversible twin.

Each arm is one shipped config trained with the same recipe twice, once as is (reversible) and once with
`MVIT.REV.ENABLE False` (the twin: ordinary autograd, the same widths, depths and solver), for several
seeds (`RNG_SEED`). Every run is a fresh `run_net` process (train, then test the last checkpoint), so
runs cannot share state and a crash costs one run; its test top-1 is read back from the run's
`json_stats.log` (the `test_final` line the evaluator writes). A run whose directory already holds that
line is not run again, so an interrupted sweep continues where it stopped.

Only the runs need CPU time; `summarise` and `markdown_table` are pure and tested on their own.
"""

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VARIANTS", "Run", "markdown_table", "read_test_top1", "run_claim", "run_one", "summarise"]

# variant name -> config overrides; the recipe (solver, data, augmentation, seed) is the config's
VARIANTS = {"reversible": [], "non-reversible": ["MVIT.REV.ENABLE", "False"]}

# run_net's main, without going through tools/ (logic in the package depends on nothing above it)
_RUN_NET = "import sys; from revvit.engine.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass(frozen=True)
class Run:
    """One training run: which config, which variant, which seed, and where it writes."""

    cfg: str
    variant: str
    seed: int
    out_root: str

    @property
    def output_dir(self):
        return os.path.join(self.out_root, Path(self.cfg).stem, f"{self.variant}_seed{self.seed}")

    def argv(self, extra_opts=()):
        return ["--cfg", self.cfg, "RNG_SEED", str(self.seed), "OUTPUT_DIR", self.output_dir,
                *VARIANTS[self.variant], *extra_opts]


def read_test_top1(output_dir):
    """Test top-1 (%) of the last `test_final` line in OUTPUT_DIR/json_stats.log; None if the run never tested."""
    path = Path(output_dir) / "json_stats.log"
    if not path.is_file():
        return None
    top1 = None
    for line in path.read_text().splitlines():
        text = line.split("json_stats:", 1)[-1].strip()
        if not text.startswith("{"):
            continue
        stats = json.loads(text)
        if stats.get("split") == "test_final":
            top1 = float(stats["top1_acc"])
    return top1


def run_one(run, extra_opts=(), timeout=None, log=print):
    """Train and test one run in a fresh process (unless it already tested); returns a result dict."""
    top1 = read_test_top1(run.output_dir)
    seconds = 0.0
    if top1 is None:
        os.makedirs(run.output_dir, exist_ok=True)
        start = time.monotonic()
        with open(os.path.join(run.output_dir, "run_net.out"), "w") as out:
            proc = subprocess.run([sys.executable, "-c", _RUN_NET, *run.argv(extra_opts)],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        seconds = time.monotonic() - start
        top1 = read_test_top1(run.output_dir)
        if proc.returncode != 0 or top1 is None:
            log(f"{run.output_dir}: run_net exited {proc.returncode} without a test result; see run_net.out there")
    log(f"{Path(run.cfg).stem} {run.variant} seed {run.seed}: test top-1 {top1} ({seconds:.0f} s)")
    return {"cfg": run.cfg, "variant": run.variant, "seed": run.seed, "top1": top1,
            "seconds": round(seconds, 1), "output_dir": run.output_dir}


def run_claim(cfgs, seeds, out_root, extra_opts=(), timeout=None, on_result=None, log=print):
    """All runs, config by config and within a config seed-major (both variants get a seed before either
    gets the next), so that a sweep stopped early still compares the variants on equal terms and the
    first configs are complete. on_result(results) after each run."""
    results = []
    for cfg in cfgs:
        for seed in seeds:
            for variant in VARIANTS:
                results.append(run_one(Run(cfg, variant, seed, out_root), extra_opts, timeout, log))
                if on_result is not None:
                    on_result(results)
    return results


def _mean_std(values):
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(results):
    """[{cfg, variant, seed, top1}] -> {cfg: {variant: {n, mean, std, min, max, seeds}}}; failed runs
    (top1 None) are left out and counted under "failed"."""
    summary = {}
    for r in results:
        arm = summary.setdefault(r["cfg"], {}).setdefault(r["variant"], {"top1": [], "seeds": [], "failed": 0})
        if r["top1"] is None:
            arm["failed"] += 1
        else:
            arm["top1"].append(float(r["top1"]))
            arm["seeds"].append(r["seed"])
    for arms in summary.values():
        for arm in arms.values():
            values = arm.pop("top1")
            arm["n"] = len(values)
            if values:
                arm["mean"], arm["std"] = _mean_std(values)
                arm["min"], arm["max"] = min(values), max(values)
                arm["values"] = values
    return summary


def markdown_table(summary):
    """One row per config: each variant's mean ± std (min-max, n seeds), and reversible minus twin."""
    names = list(VARIANTS)
    lines = ["| config | " + " | ".join(f"{v} top-1 (%)" for v in names) + " | difference |",
             "|---" * (len(names) + 2) + "|"]
    for cfg, arms in summary.items():
        cells = []
        for v in names:
            arm = arms.get(v, {"n": 0})
            if arm["n"] == 0:
                cells.append("—")
                continue
            cells.append(f"{arm['mean']:.2f} ± {arm['std']:.2f} ({arm['min']:.2f}–{arm['max']:.2f}, "
                         f"{arm['n']} seed{'s' if arm['n'] > 1 else ''})")
        both = [arms.get(v, {"n": 0}) for v in names[:2]]
        diff = f"{both[0]['mean'] - both[1]['mean']:+.2f}" if all(a["n"] for a in both) else "—"
        lines.append(f"| `{cfg}` | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines)
