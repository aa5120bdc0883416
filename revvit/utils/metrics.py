"""Top-k correct counts and error rates of a batch of scores.

``topk_errors`` is timm's ``accuracy``. ``topks_correct`` stays our own three lines because the
engine needs counts, not timm's batch percentages: validation all-reduces and sums them over batches
of uneven size, and a count is exact where a percentage turned back into a count needs rounding.
Both follow the same rule for ``k`` above the number of classes (every sample is correct), so a
3-class problem still reports a meaningful "top-5".
"""

from timm.utils import accuracy

__all__ = ["topks_correct", "topk_errors"]


def _check_rows(preds, labels):
    if preds.shape[0] != labels.shape[0]:
        raise ValueError(f"preds has {preds.shape[0]} rows but labels has {labels.shape[0]}")


def topks_correct(preds, labels, ks):
    """Number of samples whose label is among the k highest scores, for each k in ``ks``."""
    _check_rows(preds, labels)
    kmax = min(max(ks), preds.shape[1])
    top = preds.topk(kmax, dim=1, largest=True, sorted=True).indices  # [N, kmax]
    hits = top.eq(labels.view(-1, 1).to(top.device))  # [N, kmax]
    return [hits[:, : min(k, kmax)].any(dim=1).float().sum() for k in ks]


def topk_errors(preds, labels, ks):
    """Top-k error in percent for each k."""
    _check_rows(preds, labels)
    return [100.0 - acc for acc in accuracy(preds, labels.to(preds.device), topk=tuple(ks))]
