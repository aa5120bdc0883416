"""Classification head."""

from torch import nn


class TransformerBasicHead(nn.Module):
    """Dropout, linear ``projection``, and in eval mode the output activation.

    Evaluation returns probabilities (``MODEL.HEAD_ACT``) as PySlowFast does, so that multi-view
    test scores can be summed per video; training returns logits for the loss.
    """

    _ACTS = {"softmax": lambda: nn.Softmax(dim=1), "sigmoid": nn.Sigmoid, "none": lambda: None}

    def __init__(self, dim_in, num_classes, dropout_rate=0.0, act_func="softmax", detach_final_fc=False):
        super().__init__()
        if dropout_rate > 0:
            self.dropout = nn.Dropout(dropout_rate)
        self.projection = nn.Linear(dim_in, num_classes)
        self.act = self._ACTS[act_func]()
        self.detach_final_fc = detach_final_fc

    def forward(self, x):
        if hasattr(self, "dropout"):
            x = self.dropout(x)
        if self.detach_final_fc:
            x = x.detach()
        x = self.projection(x)
        if not self.training and self.act is not None:
            x = self.act(x)
        return x
