"""The report of tools/gpu_check.sh run (and rehearse): what each part found, in gpu_check.md and gpu_check.json.

    python -m revvit.benchmarks.gpu_check versions FILE.json     the GPU, driver, torch, CUDA, cuDNN
    python -m revvit.benchmarks.gpu_check report WORK OUTDIR     WORK: what the parts wrote; OUTDIR: the report

Nothing is measured here: the parts (tests, the demo run, tools/benchmark.py, tools/benchmark_data.py)
wrote their results under WORK; a part that failed, ran out of time or was skipped is reported as such,
and the report is still written from what the others left. The report imports nothing but the standard
library and revvit.benchmarks.slopes: it runs last, after parts that may have used up the time, so it
must not spend seconds importing torch (``versions`` imports it, as the setup part).
"""

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .slopes import PAPER_TABLE, table_rows

__all__ = ["assemble", "render_markdown", "versions"]

MiB = 2**20
TABLE_RUNS = [(p, a) for p in ("fp32", "bf16") for a in ("fused", "math")]
TIME_RUNS = {"time_vit_b": "Rev-ViT-B", "time_mvit_b": "Rev-MViT-B"}
# The loader row whose recipe feeds each timed model (tools/benchmark_data.py's configs).
LOADER_CONFIG = {"time_vit_b": "configs/ImageNet/REV_VIT_B.yaml", "time_mvit_b": "configs/ImageNet/REV_MVIT_B_16_CONV.yaml"}


def versions():
    """The machine and software a GPU figure was measured with."""
    import torch

    def driver():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "gpu": props.name if props else None,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1) if props else None,
        "compute_capability": f"{props.major}.{props.minor}" if props else None,
        "bf16": torch.cuda.is_bf16_supported(including_emulation=False) if cuda else None,
        "driver": driver(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def _json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _mode(work):
    """``run`` (on a GPU) or ``rehearse`` (tools/gpu_check.sh rehearse: the parts on a CPU at tiny sizes)."""
    return (_json(Path(work) / "mode.json") or {}).get("mode", "run")


def _status(rc):
    """What tools/gpu_check.sh's rc column means: timeout's 124 (SIGTERM at the budget) and 137 (SIGKILL
    after it); ``skip`` (not run, the note says why); ``stopped`` (the whole check was stopped during it)."""
    if rc == "0":
        return "ok"
    if rc in ("124", "137"):
        return "timed out"
    return {"skip": "skipped", "stopped": "stopped"}.get(rc, "failed")


def _parts(work):
    rows = []
    tsv = Path(work) / "parts.tsv"
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            name, rc, seconds, budget, *note = line.split("\t")
            rows.append({"part": name, "rc": int(rc) if rc.lstrip("-").isdigit() else None, "seconds": int(seconds),
                         "budget_s": int(budget), "status": _status(rc), "note": note[0] if note else ""})
    return rows


_VERBOSE_RESULT = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)


def _from_log(path):
    """Counts from a pytest -v log, line by line: what a part cut at its budget (no XML written) still shows."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    results = _VERBOSE_RESULT.findall(text)
    if not results:
        return None
    count = {k: sum(r == k for _, r in results) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    return {"tests": len(results), "passed": count["PASSED"], "failures": count["FAILED"], "errors": count["ERROR"],
            "skipped": count["SKIPPED"], "failed": [t for t, r in results if r in ("FAILED", "ERROR")], "cut": True}


def _junit(path):
    """Counts and the failed tests of a pytest --junitxml file; when the part was cut before pytest wrote
    it, the counts of the tests its log shows done (``cut``); None when neither exists."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return _from_log(Path(path).with_suffix(".log"))
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s
              if case.find("failure") is not None or case.find("error") is not None]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return dict(counts, failed=failed)


def _demo(work):
    log = Path(work) / "demo" / "json_stats.log"
    if not log.is_file():
        return None
    stats = [json.loads(line[len("json_stats: "):]) for line in log.read_text().splitlines() if line.startswith("json_stats: ")]
    epochs = [s for s in stats if s.get("_type") == "train_epoch"]
    final = [s for s in stats if s.get("split") == "test_final"]
    out = {"epochs": len(epochs), "last_epoch": epochs[-1] if epochs else None, "test_final": final[-1] if final else None}
    predictions = _json(Path(work) / "predict.json")
    if predictions:
        preds = predictions["predictions"]
        right = sum(p["top"][0]["class"] == Path(p["input"]).parent.name for p in preds)
        out["predict"] = {"inputs": len(preds), "skipped": len(predictions["skipped"]),
                          "top1_acc": 100.0 * right / len(preds) if preds else None}
    return out


def _memory(work):
    """Memory per image (slope of the backward's peak) per model, way, precision and attention kernel."""
    rows = []
    for precision, attention in TABLE_RUNS:
        result = _json(Path(work) / f"table_{precision}_{attention}.json")
        if not result:
            continue
        for r in table_rows(result["points"], result["settings"]["budget_bytes"]):
            rows.append({"model": r["model"], "way": r["way"], "precision": precision, "attention": attention,
                         "batches": r["batches"], "mib_per_image": r["bytes_per_image"] / MiB,
                         "backward_holds": r["backward_holds"], "model_state_mib": r["model_state_bytes"] / MiB})
        for p in result["points"]:
            if "error" in p:
                rows.append({"model": p["extra"]["model"], "way": p["way"], "precision": precision, "attention": attention,
                             "error": p["error"][:200]})
    return rows


def _worker_rates(data):
    """Images per CPU second of one loader worker, per config: with AUG.ON_DEVICE where it was measured
    (a CUDA run's default, ``auto``), else the worker pipeline's."""
    data = data or {}
    rates = {r["config"]: r["produces"] for r in data.get("rows", []) if "image" in r["pipeline"]}
    rates.update({r["config"]: r["on_device"] for r in data.get("on_device", []) if r.get("on_device")})
    return rates


def _timing(work):
    produces = _worker_rates(_json(Path(work) / "data.json"))
    out = {}
    for key, name in TIME_RUNS.items():
        result = _json(Path(work) / f"{key}.json")
        if not result:
            continue
        ways = {}
        for way, e in result["ways"].items():
            ways[way] = {"batch_size": e["batch_size"], "step_ms": 1000 * e["step_time_s"], "ratio": e["ratio"],
                         "flop_ratio": e["flop_ratio"], "images_per_s": e["batch_size"] / e["step_time_s"],
                         "ratio_rounds": e["ratio_per_round"]}
        rate = produces.get(LOADER_CONFIG[key])
        rev = ways.get("reversible")
        out[name] = {"config": result["config"], "ratio_of": result.get("ratio_of"), "ways": ways,
                     "worker_images_per_cpu_s": rate,
                     "workers_needed": rev["images_per_s"] / rate if rev and rate else None}
    return out


def assemble(work):
    """Everything the parts left under ``work``, as one JSON-able dict."""
    return {"mode": _mode(work), "versions": _json(Path(work) / "versions.json"), "parts": _parts(work),
            "tests": {name: _junit(Path(work) / f"{name}.xml") for name in ("cpu", "cuda")},
            "demo": _demo(work), "memory": _memory(work), "timing": _timing(work), "paper": PAPER_TABLE}


def _fmt(x, spec="{:.1f}"):
    return "-" if x is None else spec.format(x)


def _part_row(p):
    status = p["status"] if p["rc"] is None else f"{p['status']} (rc {p['rc']})"
    return f"| {p['part']} | {status} | {p['seconds']} | {p['budget_s']} | {p.get('note') or ''} |"


def render_markdown(doc):
    v = doc["versions"] or {}
    cpu = doc.get("mode") == "rehearse"
    machine = (f"No GPU: torch {v.get('torch', '?')}, Python {v.get('python', '?')}, {v.get('cpus', '?')} CPUs; "
               f"{v.get('date_utc', '?')} UTC.") if cpu else (
        f"{v.get('gpu', '?')} ({v.get('gpu_memory_gib', '?')} GiB, compute capability {v.get('compute_capability', '?')}), "
        f"driver {v.get('driver', '?')}, torch {v.get('torch', '?')}, CUDA {v.get('cuda', '?')}, cuDNN {v.get('cudnn', '?')}, "
        f"NCCL {v.get('nccl', '?')}, Python {v.get('python', '?')}, {v.get('cpus', '?')} CPUs; {v.get('date_utc', '?')} UTC.")
    lines = ["# tools/gpu_check.sh rehearse: a CPU rehearsal, not a GPU measurement" if cpu else "# tools/gpu_check.sh run", ""]
    if cpu:
        lines += ["Every part ran on this machine's CPU, at tiny sizes (2-block models of width 32, and MViT-B, on 32x32 images; "
                  "one demo epoch), to check that each part runs and that this report is written. No number below "
                  "is a GPU figure, and none is a measurement of the published models.", ""]
    lines += [machine, "", "## Parts", "", "| part | status | seconds | budget (s) | note |", "|---|---|---|---|---|"]
    lines += [_part_row(p) for p in doc["parts"]]
    lines += ["", "## Tests", ""]
    for name, t in doc["tests"].items():
        if t is None:
            lines.append(f"- {name}: no result file (the part failed before pytest reported)")
            continue
        cut = " (the part was cut at its budget: the tests its log shows done)" if t.get("cut") else ""
        lines.append(f"- {name}: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped{cut}")
        lines += [f"  - FAILED {f}" for f in t["failed"][:30]]
    d = doc["demo"]
    lines += ["", "## Digits demo (NUM_GPUS 0, fp32, CPU)" if cpu else "## Digits demo (NUM_GPUS 1, bf16)", ""]
    if d:
        final = d["test_final"] or {}
        lines.append(f"- {d['epochs']} epoch{'' if d['epochs'] == 1 else 's'}; test top-1 {_fmt(final.get('top1_acc'))}% on {final.get('num_samples', '-')} images")
        if "predict" in d:
            p = d["predict"]
            lines.append(f"- tools/predict.py: {p['inputs']} test images, top-1 {_fmt(p['top1_acc'])}%, {p['skipped']} skipped")
    else:
        lines.append("- no result (see the demo part's log)")
    lines += ["", "## Memory per image (MiB, slope of the backward's peak; " + ("resident set, tiny models, CPU)" if cpu else "GPU allocator)"), "",
              "| model | way | " + " | ".join(f"{p} {a}" for p, a in TABLE_RUNS) + " | paper (MB) |",
              "|---|---|" + "---|" * (len(TABLE_RUNS) + 1)]
    cells = {(r["model"], r["way"], r["precision"], r["attention"]): r for r in doc["memory"]}
    for model in PAPER_TABLE:
        for way in ("reversible", "non_reversible"):
            row = []
            for p, a in TABLE_RUNS:
                r = cells.get((model, way, p, a))
                row.append("-" if r is None else "failed" if "error" in r else
                           _fmt(r["mib_per_image"]) + ("" if r["backward_holds"] else "*"))
            lines.append(f"| {model} | {way} | " + " | ".join(row) + f" | {PAPER_TABLE[model][way]} |")
    lines += ["", "(* the backward did not hold the step's peak at both batches.) The paper measured with attention "
              "that keeps its probabilities: compare its column with 'math'.", "",
              "## Step time, bf16 (" + ("on the CPU; ViT-B at its tiny sizes, MViT-B at 32x32)" if cpu else "CUDA events)"), "",
              "| model | way | batch | step (ms) | images / s | reversible / this way | FLOP ratio | one loader worker, default AUG.ON_DEVICE (images / CPU s) | workers needed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, t in doc["timing"].items():
        for way, e in t["ways"].items():
            lines.append(f"| {name} | {way} | {e['batch_size']} | {e['step_ms']:.1f} | {e['images_per_s']:.0f} | {e['ratio']:.3f} | "
                         f"{e['flop_ratio']:.3f} | {_fmt(t['worker_images_per_cpu_s'])} | "
                         f"{_fmt(t['workers_needed'], '{:.1f}') if way == 'reversible' else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "versions":
        found = versions()
        Path(argv[1]).write_text(json.dumps(found, indent=1))
        print(json.dumps(found))
        return 0
    if len(argv) == 3 and argv[0] == "report":
        doc = assemble(argv[1])
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))
        (out / "gpu_check.md").write_text(render_markdown(doc))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
