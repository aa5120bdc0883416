"""Top-k correct counts of a batch of scores.

Our own three lines where timm's ``accuracy`` exists, because the engine needs counts, not timm's
batch percentages: validation all-reduces and sums them over batches of uneven size, and a count is
exact where a percentage turned back into a count needs rounding. For ``k`` above the number of
classes every sample is correct (timm's rule too), so a 3-class problem still reports a meaningful
"top-5".
"""

__all__ = ["topks_correct"]


def topks_correct(preds, labels, ks):
    """Number of samples whose label is among the k highest scores, for each k in ``ks``."""
    if preds.shape[0] != labels.shape[0]:
        raise ValueError(f"preds has {preds.shape[0]} rows but labels has {labels.shape[0]}")
    kmax = min(max(ks), preds.shape[1])
    top = preds.topk(kmax, dim=1, largest=True, sorted=True).indices  # [N, kmax]
    hits = top.eq(labels.view(-1, 1).to(top.device))  # [N, kmax]
    return [hits[:, : min(k, kmax)].any(dim=1).float().sum() for k in ks]
