"""Top-k correct counts and error rates of a batch of scores."""

__all__ = ["topks_correct", "topk_errors"]


def topks_correct(preds, labels, ks):
    """Number of samples whose label is among the k highest scores, for each k in ``ks``.

    ``k`` larger than the number of classes counts as the number of classes (every sample is
    correct), so a 3-class problem still reports a meaningful "top-5".
    """
    if preds.shape[0] != labels.shape[0]:
        raise ValueError(f"preds has {preds.shape[0]} rows but labels has {labels.shape[0]}")
    kmax = min(max(ks), preds.shape[1])
    top = preds.topk(kmax, dim=1, largest=True, sorted=True).indices  # [N, kmax]
    hits = top.eq(labels.view(-1, 1).to(top.device))  # [N, kmax]
    return [hits[:, : min(k, kmax)].any(dim=1).float().sum() for k in ks]


def topk_errors(preds, labels, ks):
    """Top-k error in percent for each k."""
    n = preds.shape[0]
    return [(1.0 - c / n) * 100.0 for c in topks_correct(preds, labels, ks)]
