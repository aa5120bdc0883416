"""Classification head."""

from torch import nn


class TransformerBasicHead(nn.Module):
    """Dropout, linear ``projection``, and (on request) the output activation ``MODEL.HEAD_ACT``.

    ``forward`` returns logits, as a timm head does. PySlowFast's head applies the activation itself
    in eval mode, so that multi-view test scores can be summed per video; ``MViT`` asks for that with
    ``apply_act`` only on its list-input path (the one ``run_net`` uses), so official-fidelity testing
    and a logits-out module share one head and one set of weights.
    """

    _ACTS = {"softmax": lambda: nn.Softmax(dim=1), "sigmoid": nn.Sigmoid, "none": nn.Identity}

    def __init__(self, dim_in, num_classes, dropout_rate=0.0, act_func="softmax", detach_final_fc=False):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.projection = nn.Linear(dim_in, num_classes)
        self.act = self._ACTS[act_func]()
        self.detach_final_fc = detach_final_fc

    def forward(self, x, pre_logits=False, apply_act=False):
        """``pre_logits``: the pooled features after dropout; ``apply_act``: probabilities in eval mode."""
        x = self.dropout(x)
        if pre_logits:
            return x
        if self.detach_final_fc:
            x = x.detach()
        x = self.projection(x)
        return self.act(x) if apply_act and not self.training else x
