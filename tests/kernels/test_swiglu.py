"""swiglu: its reference is Llama's MLP activation (the kernel against the reference: test_gated_activation.py)."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from frontier.kernels.swiglu import swiglu_reference


def test_reference_is_llamas_activation() -> None:
    # Llama's MLP: act_fn(gate_proj(x)) * up_proj(x) with ACT2FN["silu"]
    gate, up = torch.randn(3, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    assert torch.equal(swiglu_reference(gate, up), ACT2FN["silu"](gate) * up)
