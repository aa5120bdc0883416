from revvit.benchmarks import search
from revvit.benchmarks.settings import StepSpec


def test_max_batch_finds_the_boundary(monkeypatch):
    calls = []

    def fake_run(spec, timeout=None):
        calls.append(spec.batch_size)
        return {"total_bytes": 1000 + 37 * spec.batch_size}

    monkeypatch.setattr(search.step, "run_point", fake_run)
    best, trials = search.max_batch(StepSpec(), budget_bytes=1000 + 37 * 123 + 5)
    assert best == 123
    assert {t["batch_size"]: t["fits"] for t in trials}[124] is False
    assert len(calls) <= 6  # linear memory: the prediction lands on the boundary
    assert search.max_batch(StepSpec(), budget_bytes=900)[0] == 0


def test_a_crashed_trial_does_not_fit(monkeypatch):
    monkeypatch.setattr(search.step, "run_point", lambda spec, timeout=None: {"error": "killed"} if spec.batch_size > 5 else {"total_bytes": 10})
    best, trials = search.max_batch(StepSpec(), budget_bytes=10**9, limit=64)
    assert best == 5 and any(t["error"] == "killed" for t in trials)
