"""Classification head."""

from torch import nn


class TransformerBasicHead(nn.Module):
    """Dropout and a linear ``projection``: logits, as a timm head gives.

    PySlowFast's head also applies ``MODEL.HEAD_ACT`` in eval mode; here that activation belongs to
    evaluation and prediction (``revvit.engine.evaluate.scores``), so the model's output means one thing
    in training, in testing and for anyone who uses it as a timm model.
    """

    def __init__(self, dim_in, num_classes, dropout_rate=0.0, detach_final_fc=False):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.projection = nn.Linear(dim_in, num_classes)
        self.detach_final_fc = detach_final_fc

    def forward(self, x, pre_logits=False):
        """``pre_logits``: the pooled features after dropout, which ``projection`` maps to logits."""
        x = self.dropout(x)
        if pre_logits:
            return x
        if self.detach_final_fc:
            x = x.detach()
        return self.projection(x)
