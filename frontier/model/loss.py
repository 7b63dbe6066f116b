"""The module the trainer hands to DeepSpeed: a causal LM whose forward returns the SUMMED token loss.

Returning a sum (not a mean) lets the trainer normalise a whole global batch by its own token
count (frontier.train.engine.step); a per-micro-batch mean would weight short, padded micro-batches
like full ones. The loss goes through frontier.kernels: the fused linear + cross-entropy (no
(N, V) logits) when ``kernels.fused_linear_cross_entropy`` is on, else the lm_head then
``cross_entropy``. Targets equal to IGNORE_INDEX (padding) contribute nothing. The fused loss computes the
model's own head: its bias (phi-2) and final-logit softcapping (Gemma 2) included; a head it cannot compute
(a logit scale: Cohere, Granite; not a linear layer) is refused when the module is built (fused_head_softcap).

Packed documents: the batch's ``doc_ids`` (B, T), computed by the batch builder
(frontier.train.batches.data), are handed to the LM explicitly (frontier.model.attention.document_inputs:
the ``doc_ids`` forward keyword of a frontier attention, else the block-causal mask of the LM's own
attention), so no token attends to another document; ``position_ids`` (B, T), restarting at 0 at each
document start, feed the position embedding; and the data pipeline sets the target of each document's last
token to IGNORE_INDEX.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.kernels.cross_entropy import cross_entropy
from frontier.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
from frontier.model.attention import document_inputs

IGNORE_INDEX = -100

# Config keys of families whose head scales its logits by a factor the fused loss does not apply (Cohere,
# Granite): with one of them set (other than 1) the fused loss is refused rather than computed wrong.
_LOGIT_SCALES = ("logit_scale", "logits_scaling")


def fused_head_softcap(lm: Any) -> float | None:
    """The final-logit softcap the fused loss must apply for `lm`'s head (None: a plain head), or ConfigError
    where the head is not ``linear(hidden, W, b)`` (+ softcap) of the base model's last hidden state."""
    name = type(lm).__name__
    head = lm.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"kernels.fused_linear_cross_entropy: {name}'s output head is {type(head).__name__}, not a linear "
            "layer the fused loss can read; set it to false"
        )
    for key in _LOGIT_SCALES:
        value = getattr(lm.config, key, None)
        if value is not None and float(value) != 1.0:
            raise ConfigError(
                f"kernels.fused_linear_cross_entropy: {name} scales its logits ({key}={value}), which the fused "
                "loss does not apply; set it to false"
            )
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return float(softcap) if softcap else None


class CausalLMWithLoss(nn.Module):
    """Wraps a transformers causal LM (kept as ``.lm``; its weights are what gets exported)."""

    def __init__(self, lm: Any, kernels: KernelsConfig | None = None) -> None:
        super().__init__()
        kernels = kernels or KernelsConfig()
        self.lm = lm
        self.fused = kernels.fused_linear_cross_entropy
        self.impl = kernels.cross_entropy
        self.softcap = fused_head_softcap(lm) if self.fused else None  # refused here, at build, if not plain

    def head_weight(self) -> nn.Parameter:
        """The lm_head weight (V, H); the fused loss reads it outside the head's own forward."""
        return self.lm.get_output_embeddings().weight

    def head_bias(self) -> nn.Parameter | None:
        """The lm_head bias (V,), where the family has one (phi-2)."""
        return self.lm.get_output_embeddings().bias

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, targets, position_ids (None: 0..T-1), doc_ids (None: one document per row; else
        non-decreasing along T): (B, T) int64 -> fp32 scalar, the sum of the non-ignored token losses."""
        flat_targets = targets.reshape(-1)  # (B*T,)
        # no cache: training never decodes
        lm_inputs: dict[str, Any] = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
        if doc_ids is not None:
            lm_inputs.update(document_inputs(self.lm, doc_ids))
        return self._loss(lm_inputs, flat_targets)

    def _loss(self, lm_inputs: dict[str, Any], flat_targets: torch.Tensor) -> torch.Tensor:
        if self.fused:
            hidden = self.lm.base_model(**lm_inputs).last_hidden_state  # (B, T, H)
            return fused_linear_cross_entropy(
                hidden.reshape(-1, hidden.shape[-1]),  # (B*T, H)
                self.head_weight(),
                flat_targets,
                bias=self.head_bias(),
                softcap=self.softcap,
                ignore_index=IGNORE_INDEX,
                reduction="sum",
                impl=self.impl,
            )
        logits = self.lm(**lm_inputs).logits  # (B, T, V)
        return cross_entropy(
            logits.reshape(-1, logits.shape[-1]),  # (B*T, V)
            flat_targets,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            impl=self.impl,
        )
