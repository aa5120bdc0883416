"""The largest batch whose training step fits a memory budget, found by measurement."""

from . import step

__all__ = ["max_batch"]


def max_batch(spec, budget_bytes, limit=4096, timeout=None, log=None):
    """Largest batch whose ``total_bytes`` (model state + the step's peak) fits ``budget_bytes``.

    Every trial is one training step of ``spec`` at another batch (``step.run_point``); a trial that
    crashes (out of memory) counts as not fitting. Memory grows linearly with the batch, so after two
    trials the next candidate is the line's prediction, kept strictly between the largest batch known
    to fit and the smallest known not to (bisection when the prediction does not help): a CPU step on
    a batch of hundreds takes minutes, and this needs a handful of trials where doubling and bisection
    need a dozen. Returns ``(best_batch, trials)``; best is 0 if one sample does not fit.
    """
    trials, points = [], {}

    def fits(batch):
        r = step.run_point(spec.replace(batch_size=batch, warmup=0, steps=1, saved=False), timeout=timeout)
        ok = "error" not in r and r["total_bytes"] <= budget_bytes
        if "error" not in r:
            points[batch] = r["total_bytes"]
        trials.append({"batch_size": batch, "fits": ok, "total_bytes": r.get("total_bytes"), "error": r.get("error")})
        if log:
            log(f"  max-batch {spec.way}: batch {batch} -> {r.get('total_bytes', r.get('error'))} ({'fits' if ok else 'too big'})")
        return ok

    def predicted():
        if len(points) < 2:
            return None
        (b0, m0), (b1, m1) = sorted(sorted(points.items(), key=lambda bm: abs(bm[1] - budget_bytes))[:2])
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
