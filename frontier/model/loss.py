"""The module the trainer hands to DeepSpeed: a causal LM whose forward returns the SUMMED token loss.

Returning a sum (not a mean) lets the trainer normalise a whole global batch by its own token
count (frontier.train.engine.step); a per-micro-batch mean would weight short, padded micro-batches
like full ones. The loss goes through frontier.kernels: the fused linear + cross-entropy (no
(N, V) logits) when ``kernels.fused_linear_cross_entropy`` is on, else the lm_head then
``cross_entropy``. Targets equal to IGNORE_INDEX (padding) contribute nothing.

Packed documents: ``position_ids`` (B, T) restarting at 0 at each document start go to the LM
unchanged; the attention then keeps each document to itself (frontier.model.kernels for Llama,
transformers' own packed-sequence mask for its sdpa/eager attention), and the data pipeline sets
the target of each document's last token to IGNORE_INDEX (frontier.train.batches.data).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frontier.config.kernels import KernelsConfig
from frontier.kernels.cross_entropy import cross_entropy
from frontier.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
from frontier.model.kernels import positions_from_caller

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
        self, input_ids: torch.Tensor, targets: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids, targets, position_ids (None: 0..T-1): (B, T) int64 -> fp32 scalar, the sum of the
        non-ignored token losses."""
        flat_targets = targets.reshape(-1)  # (B*T,)
        # no cache: training never decodes, and transformers detects packed position_ids only without one
        lm_inputs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
        if torch.compiler.is_compiling():  # a traced graph finds the documents itself (no device read there)
            return self._loss(lm_inputs, flat_targets)
        # eager: this call knows whether the rows are packed, so the attention need not read the device to ask
        with positions_from_caller(packed=position_ids is not None):
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
