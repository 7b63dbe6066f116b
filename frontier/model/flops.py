"""Training FLOPs per token (nanoGPT / PaLM appendix B): ``6 N + 12 L H S``.

N counts the parameters that take part in matrix multiplies: every parameter except lookup
tables (position embeddings, and the token embedding unless it is tied to the output head,
where it does the (H x V) projection). 6N is forward + backward of those matmuls; 12 L H S is
the attention score and value products (L layers, H hidden, S context).
"""

from __future__ import annotations

from typing import Any

from torch import nn


def matmul_parameters(lm: Any) -> int:
    """N above for a transformers causal LM (works on the meta device: only shapes are read)."""
    params = {id(p): p for p in lm.parameters()}
    head = lm.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    lookup = 0
    for module in lm.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) not in head_ids:
            lookup += module.weight.numel()
    return sum(p.numel() for p in params.values()) - lookup


def flops_per_token(n_matmul_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Forward + backward FLOPs to train on one token with context `seq_len`."""
    return 6.0 * n_matmul_params + 12.0 * num_layers * hidden_size * seq_len


def model_flops_per_token(lm: Any, seq_len: int) -> float:
    """flops_per_token for a transformers causal LM, reading L and H from its config."""
    cfg = lm.config
    return flops_per_token(matmul_parameters(lm), cfg.num_hidden_layers, cfg.hidden_size, seq_len)
