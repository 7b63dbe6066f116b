"""engine.compile: torch.compile (Inductor) of what the DeepSpeed engine runs, the model and its loss.

What is compiled is the *forward method* of the engine's module (frontier.model.loss.CausalLMWithLoss:
the model, then the loss), replaced on that one module object:

- The module keeps its children and parameters, so parameter names, ``state_dict`` keys, DeepSpeed's
  checkpoint files and the exported Hugging Face weights are exactly those of an eager run
  (``torch.compile(module)`` would return an ``OptimizedModule`` whose keys gain ``_orig_mod.``).
- DeepSpeed's own forward hooks on that module stay outside the graph and run eagerly. DeepSpeed's
  ``engine.compile()`` compiles the module's whole call (``nn.Module.compile``), hooks included, and its
  forward prologue starts a throughput timer with ``time.time()``, which dynamo cannot trace: the graph
  breaks there, so model + loss could not be one ``fullgraph`` graph that way.
- ``fullgraph=True``: one graph for model + loss, or an error naming what breaks it (never a silent fall
  back to eager pieces), activation checkpointing included (each decoder layer is traced inside
  torch.utils.checkpoint's higher-order op). Except under ZeRO-3, which fetches each layer's parameters in
  hooks on every submodule: those are not one graph, so dynamo splits it there.

Compile is operational: the compiled graph computes the same values in fused kernels, equal within
rounding (tests/train/test_compile.py measures the loss curves), so a resume may switch it. That holds
for dropout too because Inductor is told to draw random numbers through eager's ops
(``fallback_random``): the same masks from the same torch generator, which ends in the same state (its
own in-graph RNG would draw other masks, a different run). It is a process-wide Inductor setting, set
by the stage process that compiles; its cost is unfused random ops, only where the model has dropout.

Cost, measured on this project's 2-core CPU machine for the 2-layer test model (hidden 32, batch 2x16):
the first forward + backward compiles for ~60-100 s with an empty Inductor cache (~10 s with a warm one,
~/.cache or TORCHINDUCTOR_CACHE_DIR), then a step takes ~1-6 ms against eager's ~5-9 ms. A new input
shape (a fine-tune batch of another length) or eval mode compiles again; torch marks a dimension dynamic
after its first change, so a run compiles a handful of graphs."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("frontier.model")

BACKEND = "inductor"


def compile_for_training(module: nn.Module, *, zero_stage: int) -> None:
    """Compile `module`'s forward (model + loss) in place; its names, weights and hooks are unchanged."""
    fullgraph = zero_stage < 3
    log.info("compiling the model and loss (torch.compile, %s, fullgraph=%s); the first steps include compile "
             "time", BACKEND, fullgraph)  # fmt: skip
    torch._inductor.config.fallback_random = True  # dropout masks from eager's generator (see above)
    # an instance attribute: nn.Module.__call__ runs its hooks (DeepSpeed's) eagerly around this
    module.forward = torch.compile(module.forward, backend=BACKEND, fullgraph=fullgraph)
