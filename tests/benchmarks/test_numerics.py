"""--precision and --attention change what a measured step computes; --device is honoured by every command."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from revvit.benchmarks.numerics import step_context
from revvit.benchmarks.settings import StepSpec
from revvit.benchmarks.step import measure
from revvit.benchmarks.timing import interleaved_step_times

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/ImageNet/REV_VIT_S.yaml"
WIDTH, HEADS, CROP, DEPTH, BATCH = 32, 2, 64, 2, 2
TOKENS = (CROP // 16) ** 2  # ViT-S patches of 16 pixels
TINY = ("MVIT.EMBED_DIM", str(WIDTH), "MVIT.NUM_HEADS", str(HEADS), "MVIT.DEPTH", str(DEPTH),
        "DATA.TRAIN_CROP_SIZE", str(CROP), "MODEL.NUM_CLASSES", "10")
CPU = torch.device("cpu")


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func._overloadpacket))
        return func(*args, **(kwargs or {}))


def attention_ops(attention, precision="fp32"):
    q = torch.randn(2, HEADS, TOKENS, WIDTH // HEADS)
    with _Ops() as ops, step_context(precision, attention, CPU):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return ops.names, out


def test_math_attention_is_the_explicit_softmax_and_fused_is_not():
    fused, _ = attention_ops("fused")
    math, _ = attention_ops("math")
    softmax = lambda names: any(n.endswith("softmax") for n in names)  # noqa: E731 (_softmax or _safe_softmax)
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in fused and not softmax(fused)
    assert softmax(math) and "aten.bmm" in math and not any("flash" in n for n in math)


def test_bf16_precision_is_autocast():
    _, out = attention_ops("fused", "bf16")
    assert out.dtype == torch.bfloat16
    with step_context("fp32", "fused", CPU):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        StepSpec(precision="fp8")


def test_math_attention_keeps_the_probabilities_for_backward():
    """The twin keeps, per block, its attention probabilities (batch x heads x tokens^2, float32) only
    under the math kernel; the fused kernel keeps instead each row's log-sum-exp (batch x heads x tokens),
    from which its backward recomputes them. Both keep q, k, v and the output."""
    kept = {a: measure(StepSpec(config=CONFIG, opts=TINY, way="non_reversible", batch_size=BATCH, steps=0, warmup=0,
                                saved=True, attention=a, threads=1))["saved_bytes"] for a in ("fused", "math")}
    probabilities, logsumexp = BATCH * HEADS * TOKENS * TOKENS * 4, BATCH * HEADS * TOKENS * 4
    assert kept["math"] - kept["fused"] >= DEPTH * (probabilities - logsumexp), kept


@pytest.mark.parametrize("way", ["act_checkpoint", "reversible", "rev_act_checkpoint"])
def test_math_attention_reaches_every_recomputation(way, monkeypatch):
    """Every attention of a measured step, recomputations in backward included, runs the math kernel; a
    checkpointed block whose recomputation picked another kernel would fail torch's checkpoint check."""
    flags, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        flags.append((torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
                      torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    r = measure(StepSpec(config=CONFIG, opts=TINY, way=way, batch_size=BATCH, steps=1, warmup=0, threads=1, attention="math"))
    assert r["attention"] == "math"
    assert len(flags) == 2 * DEPTH  # every block's attention in forward, and again in its recomputation
    assert set(flags) == {(True, False, False, False)}


def test_measure_and_interleaved_timing_in_bf16_with_math_attention():
    r = measure(StepSpec(config=CONFIG, opts=TINY, way="reversible", batch_size=BATCH, steps=1, warmup=1, threads=1,
                         precision="bf16", attention="math"))
    assert r["precision"] == "bf16" and r["attention"] == "math" and r["timer"] == "host clock"
    specs = [StepSpec(config=CONFIG, opts=TINY, way=w, batch_size=BATCH, precision="bf16", attention="math")
             for w in ("reversible", "non_reversible")]
    out = interleaved_step_times(specs, rounds=1, warmup=0)
    assert out["ratio_of"] == "cpu time" and out["device"] == "cpu"
    e = out["ways"]["non_reversible"]
    assert e["ratio"] == e["cpu_ratio"] and e["precision"] == "bf16"
    with pytest.raises(ValueError, match="one device"):
        interleaved_step_times([specs[0], specs[1].replace(device="cuda")], rounds=1)


def run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))


@pytest.mark.slow
def test_cli_table_batches_precision_and_saved_sweep_flags(tmp_path):
    out = tmp_path / "table.json"
    proc = run("table", "--models", "ViT-S", "--ways", "reversible", "--repeats", "1", "--threads", "1", "--batches", "2", "3",
               "--precision", "bf16", "--attention", "math", "--opts", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    points = json.loads(out.read_text())["points"]
    assert [(p["batch_size"], p["precision"], p["attention"]) for p in points] == [(2, "bf16", "math"), (3, "bf16", "math")]
    out = tmp_path / "saved.json"
    proc = run("sweep", "--saved-only", "--cfg", CONFIG, "--depths", "1", "2", "--crop", str(CROP), "--ways", "reversible",
               "--device", "cpu", "--precision", "bf16", "--opts", *TINY[:4], "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["depth"], r["device"], r["precision"]) for r in rows] == [(1, "cpu", "bf16"), (2, "cpu", "bf16")]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("command", ["time", "sweep"])
def test_cuda_device_without_cuda_is_one_line(command):
    proc = run(command, "--cfg", CONFIG, "--device", "cuda", *(["--saved-only"] if command == "sweep" else []))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--device cuda" in proc.stderr and "no CUDA device" in proc.stderr
