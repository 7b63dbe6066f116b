"""frontier.optim: AdamW on the C++/CUDA extension and the optimizer factory.

Modules (import names from the module that defines them; the package re-exports nothing, so
importing it costs nothing):

- ``frontier.optim.ops``: the ``frontier::fused_adamw_`` op of the extension (loading, per-device kernels);
- ``frontier.optim.reference``: the bit-identical PyTorch reference of that op, and bf16 stochastic rounding;
- ``frontier.optim.fused_adamw``: ``FusedAdamW``, a torch.optim.AdamW-compatible optimizer on the op;
- ``frontier.optim.build``: ``build_optimizer`` / ``resolve_impl``, the optimizer a config asks for.

The optimizer's config schema is ``frontier.config.optimizer.OptimizerConfig``.
"""
