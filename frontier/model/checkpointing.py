"""Activation checkpointing (engine.activation_checkpointing): each decoder layer's activations are
recomputed in backward instead of stored, through transformers' own per-layer mechanism.

Why transformers' mechanism and not DeepSpeed's (deepspeed.checkpointing): the decoder layers of
transformers models already call ``torch.utils.checkpoint`` around their ``forward`` when asked, so no
model code is wrapped or copied here, and it works with every ZeRO stage (ZeRO-3's parameter hooks sit
on the submodules, which the recomputation calls again, so partitioned weights are gathered for it as
for the forward). DeepSpeed's API would need the model to call it layer by layer.

Why non-reentrant (``use_reentrant=False``): it recomputes with the RNG state of the forward (dropout
masks are replayed exactly), needs no input that requires grad (LoRA over frozen embeddings), and
supports keyword arguments. The recomputation runs the layer's ``forward`` again with the keywords of the
first pass (transformers binds them into the checkpointed partial: a packed batch's ``doc_ids`` among
them), so the submodules it calls, frontier's swapped classes and attention entry, compute the same values
as the first pass: the gradients are the same as without it. Nothing they compute comes from outside their
arguments (no thread-local, nothing kept on tensors), so the recomputation may run on autograd's device
thread, after the loss module's call has returned.
"""

from __future__ import annotations

from typing import Any

from frontier.errors import ConfigError

_KWARGS = {"use_reentrant": False}


def enable_activation_checkpointing(lm: Any) -> None:
    """Make every decoder layer of the transformers model `lm` recompute its activations in backward.

    Only in training mode with gradients on (transformers' layers check both): evaluation and
    generation run as before. ConfigError for a model whose architecture has no checkpointing support.
    """
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"engine.activation_checkpointing: {type(lm).__name__} does not support activation checkpointing in "
            "transformers; set it to false"
        )
    if hasattr(lm, "activation_checkpointing_enable"):  # the name since transformers 5.x
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(_KWARGS))
    else:  # older releases: the same mechanism under its former name
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(_KWARGS))
