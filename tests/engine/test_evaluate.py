"""evaluate.scores: MODEL.HEAD_ACT is applied by evaluation to the model's logits, exactly once."""

import pytest
import torch

from revvit.config import get_cfg
from revvit.engine.evaluate import predict_readable, scores

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])


class _Logits(torch.nn.Module):
    """A model that gives fixed logits, as a timm model does, for a batch tensor."""

    def forward(self, x):
        assert torch.is_tensor(x)
        return LOGITS[: x.shape[0]]


def _cfg(act):
    cfg = get_cfg()
    cfg.MODEL.HEAD_ACT = act
    cfg.TRAIN.MIXED_PRECISION = False
    return cfg


def test_scores_apply_the_configured_head_activation():
    # softmax of [2, 0, -1]: exp / sum = [7.389, 1, 0.368] / 8.757 = [0.8438, 0.1142, 0.0420]
    assert scores(LOGITS, _cfg("softmax"))[0].tolist() == pytest.approx([0.8438, 0.1142, 0.0420], abs=1e-4)
    assert scores(LOGITS, _cfg("softmax")).sum(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)  # float32 rounding
    assert torch.equal(scores(LOGITS, _cfg("sigmoid")), torch.sigmoid(LOGITS))
    assert torch.equal(scores(LOGITS, _cfg("none")), LOGITS)


@pytest.mark.parametrize("act", ["softmax", "sigmoid", "none"])
def test_evaluation_scores_the_model_s_logits_once(act):
    cfg = _cfg(act)
    batch = ([torch.zeros(2, 3, 4, 4)], torch.tensor([0, 2]), torch.arange(2), {"valid": torch.ones(2, dtype=torch.bool)})
    preds, labels, _, _ = predict_readable(_Logits(), batch, cfg, torch.device("cpu"))
    assert torch.equal(preds, scores(LOGITS, cfg))
    assert labels.tolist() == [0, 2]
