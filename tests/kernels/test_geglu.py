"""geglu: its reference is Gemma's MLP activation (the kernel against the reference: test_gated_activation.py)."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from frontier.kernels.geglu import geglu_reference


def test_reference_is_gemmas_activation() -> None:
    # Gemma's MLP: act_fn(gate_proj(x)) * up_proj(x) with ACT2FN["gelu_pytorch_tanh"]
    gate, up = torch.randn(3, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    assert torch.equal(geglu_reference(gate, up), ACT2FN["gelu_pytorch_tanh"](gate) * up)
