"""The module the trainer hands to DeepSpeed: a causal LM whose forward returns the SUMMED token loss.

Returning a sum (not a mean) lets the trainer normalise a whole global batch by its own token
count (frontier.train.engine.step); a per-micro-batch mean would weight short, padded micro-batches
like full ones. The loss goes through frontier.kernels: the fused linear + cross-entropy (no
(N, V) logits) when ``kernels.fused_linear_cross_entropy`` is on, else the lm_head then
``cross_entropy``. Targets equal to IGNORE_INDEX (padding) contribute nothing.

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
from frontier.kernels.cross_entropy import cross_entropy
from frontier.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
from frontier.model.attention import document_inputs

IGNORE_INDEX = -100


class CausalLMWithLoss(nn.Module):
    """Wraps a transformers causal LM (kept as ``.lm``; its weights are what gets exported)."""

    def __init__(self, lm: Any, kernels: KernelsConfig | None = None) -> None:
        super().__init__()
        kernels = kernels or KernelsConfig()
        self.lm = lm
        self.fused = kernels.fused_linear_cross_entropy
        self.impl = kernels.cross_entropy

    def head_weight(self) -> nn.Parameter:
        """The lm_head weight (V, H); the fused loss reads it outside the head's own forward."""
        return self.lm.get_output_embeddings().weight

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
