"""Fused ops: Triton kernels, each with a pure-PyTorch reference that is also the fallback.

Each op lives in a submodule of the same name; import it from there (the package re-exports nothing,
so importing it costs nothing):

- ``frontier.kernels.rms_norm``: ``rms_norm`` / ``rms_norm_reference``;
- ``frontier.kernels.rope``: ``rope`` / ``rope_reference``;
- ``frontier.kernels.swiglu``: ``swiglu`` / ``swiglu_reference``;
- ``frontier.kernels.geglu``: ``geglu`` / ``geglu_reference`` (the tanh-GELU gate of Gemma's MLP);
- ``frontier.kernels.attention``: ``attention`` (flash attention; SDPA fallback), its kernels in
  ``attention_triton`` (forward) and ``attention_triton_bwd`` (backward);
- ``frontier.kernels.cross_entropy``: ``cross_entropy`` / ``cross_entropy_reference``;
- ``frontier.kernels.fused_linear_cross_entropy``: the final projection fused with the loss.

Shared machinery: ``dispatch`` (``resolve_impl``, ``triton_available``: which implementation runs),
``library`` (registration as torch.library ops), ``interpreter`` (TRITON_INTERPRET=1 workarounds),
``triton_utils`` (the Triton import and helpers), ``gated_activation`` (the kernels and registration
behind swiglu and geglu). The section schema is ``frontier.config.kernels``.
"""
