"""Route a Hugging Face causal LM's hot ops through frontier.kernels by structure, and say what was fused.

One rule for every family: a module is served by a fused op when its math equals the op's, decided from the
module and its config, never from its class name:

* a norm (a leaf module with a 1-D ``weight`` and an ``eps``/``variance_epsilon``) is probed: its own forward on
  a random input and a random weight (``torch.func.functional_call``: the module's parameters are not read, so a
  ZeRO-3 partitioned or quantized module probes the same) against ``rms_norm(x) * w`` and ``rms_norm(x) * (1 + w)``
  (Gemma). LayerNorm matches neither and stays as it is;
* an MLP (a block's ``mlp``) is gated when it has ``gate_proj``/``up_proj`` or a fused ``gate_up_proj`` (Phi-3) and a
  ``down_proj``; its activation is probed against SiLU (swiglu) and the tanh GELU (geglu);
* a self-attention (a block's ``self_attn``/``attn``) is recognised by its layout: q/k/v projections, separate or
  fused, optional per-head q/k norms, ``o_proj`` or ``dense``, nothing else with weights. Its rotary embedding
  goes through frontier.kernels.rope (partial rotary included: cos/sin from the model's own rotary module carry the
  scaling type transformers computed). Its attention is the frontier entry (frontier.model.attention), which
  fuses a layer unless the layer's sliding window binds (-> SDPA with the window's mask) or it softcaps its
  logits (-> eager with the cap). GPT-2's attention (fused ``c_attn``, learned positions) takes the frontier
  entry with no rope to route. A layout not recognised keeps the model's own attention for every layer.

Names find candidates; they are not proof. A candidate MLP or attention is routed only when a twin of it (its
class, built from the model's config with fresh weights) computes the same through the frontier forward as
through its own (frontier.model.twin_probe): Cohere's attention, Llama's names with interleaved RoPE, keeps
its own forward, and says so.

The result is a :class:`KernelCoverage`: per op, how many of the modules it could serve it serves and why the
others run unfused; its :meth:`~KernelCoverage.line` goes to the train log and run.json. ``kernels.X: triton`` on
a model with a module the op cannot serve is one ConfigError naming the module and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import nn

from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.kernels.rms_norm import rms_norm_reference
from frontier.model.attention import attention_name, register_attention
from frontier.model.fused_modules import FrontierAttention, FrontierMLP, FrontierRMSNorm
from frontier.model.twin_probe import attention_disagrees, mlp_disagrees

_MIXINS = (FrontierRMSNorm, FrontierMLP, FrontierAttention)
_ATTENTION_PARTS = {"q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "dense"}
_QK_NORMS = (("q_norm", "k_norm"), ("q_layernorm", "k_layernorm"))
_GPT2_ATTENTION_PARTS = {"c_attn", "c_proj", "attn_dropout", "resid_dropout"}


@dataclass
class OpCoverage:
    """One op: the modules it could serve (``total``), those it serves, and the others with their reason."""

    fused: list[str] = field(default_factory=list)
    unfused: dict[str, list[str]] = field(default_factory=dict)  # reason -> module names

    @property
    def total(self) -> int:
        return len(self.fused) + sum(len(names) for names in self.unfused.values())

    def skip(self, name: str, reason: str) -> None:
        self.unfused.setdefault(reason, []).append(name)


@dataclass
class KernelCoverage:
    """What apply_kernels fused in one model, op by op (insertion order is the line's order)."""

    ops: dict[str, OpCoverage] = field(default_factory=dict)

    def op(self, name: str) -> OpCoverage:
        return self.ops.setdefault(name, OpCoverage())

    def line(self) -> str:
        """e.g. ``rms_norm 9/9, swiglu 2/2, rope 4/4, attention 2/4 (sliding window 16 -> sdpa: layers 0,2)``."""
        parts = []
        for name, op in self.ops.items():
            if not op.total:
                continue
            text = f"{name} {len(op.fused)}/{op.total}"
            if op.unfused:
                text += " (" + "; ".join(f"{reason}: {_short(names)}" for reason, names in op.unfused.items()) + ")"
            parts.append(text)
        return ", ".join(parts) if parts else "no module a fused kernel serves"

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {name: {"fused": len(op.fused), "of": op.total, "unfused": op.unfused} for name, op in self.ops.items()}


def _short(names: list[str]) -> str:
    """'layers 0,2' when the modules are one per numbered layer, else the name, or how many."""
    layers = [_layer_index(n) for n in names]
    if all(i is not None for i in layers) and len(set(layers)) == len(layers):
        return "layers " + ",".join(str(i) for i in layers)
    return names[0] if len(names) == 1 else f"{len(names)} modules"


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for before, part in zip(parts, parts[1:]):
        if before in ("layers", "h") and part.isdigit():
            return int(part)
    return None


@cache
def _fused_class(mixin: type[nn.Module], original: type[nn.Module]) -> type[nn.Module]:
    """The class a routed module gets: the mixin's forward over the original class (one class per pair)."""
    return type(f"Frontier{original.__name__}", (mixin, original), {"__module__": __name__})


def _original_class(module: nn.Module) -> type[nn.Module]:
    cls = type(module)
    return cls.__mro__[2] if issubclass(cls, _MIXINS) else cls


def _swap(module: nn.Module, mixin: type[nn.Module], **fields: object) -> None:
    module.__class__ = _fused_class(mixin, _original_class(module))  # same object and parameters
    for name, value in fields.items():
        setattr(module, name, value)


def _unrouted(module: nn.Module) -> nn.Module:
    """The module's stock behaviour for a probe (a routed module is probed as its original class)."""
    if issubclass(type(module), _MIXINS):
        module.__class__ = _original_class(module)
    return module


# ------------------------------------------------------------------------------------------------ norms


def _norm_eps(module: nn.Module) -> float | None:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(module, attr, None)
        if isinstance(value, float):
            return value
    return None


def _full_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """The tensor's shape, or for a ZeRO-3 partition (an empty slice on this rank) the whole parameter's."""
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def _is_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        not list(module.children())
        and isinstance(weight, torch.Tensor)
        and len(_full_shape(weight)) == 1
        and _norm_eps(module) is not None
    )


def _rms_offset(module: nn.Module, eps: float) -> float | None:
    """0.0 if the norm computes rms_norm(x) * w, 1.0 for rms_norm(x) * (1 + w), None for anything else."""
    (size,) = _full_shape(module.weight)  # the probe's own weight: a partitioned one is never read
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, generator=generator)
    w = torch.randn(size, generator=generator) * 0.5
    cls = type(module)
    try:
        got = torch.func.functional_call(_unrouted(module), {"weight": w}, (x,))
    except Exception:  # a norm that needs more than (x,) or other parameters is not one we can serve
        return None
    finally:
        module.__class__ = cls
    for offset in (0.0, 1.0):
        if torch.allclose(got, rms_norm_reference(x, w + offset, eps), rtol=1e-5, atol=1e-5):
            return offset
    return None


# ------------------------------------------------------------------------------------------------ MLPs


def _activation_op(module: nn.Module) -> str | None:
    act = getattr(module, "act_fn", None) or getattr(module, "activation_fn", None)
    if not callable(act):
        return None
    # the curved region densely, and far tails: an activation that equals SiLU only near zero is not SiLU
    t = torch.cat([torch.linspace(-6.0, 6.0, 241), torch.tensor([-1e4, -100.0, -30.0, -10.0, 10.0, 30.0, 100.0, 1e4])])
    try:
        got = act(t)
    except Exception:
        return None
    if got.shape == t.shape and torch.allclose(got, torch.nn.functional.silu(t), atol=1e-6):
        return "swiglu"
    if got.shape == t.shape and torch.allclose(got, torch.nn.functional.gelu(t, approximate="tanh"), atol=1e-6):
        return "geglu"
    return None


def _gated_layout(module: nn.Module) -> bool | None:
    """True: fused gate_up_proj; False: gate_proj + up_proj; None: not a gated MLP."""
    children = dict(module.named_children())
    if "down_proj" not in children:
        return None
    if "gate_up_proj" in children:
        return True
    if "gate_proj" in children and "up_proj" in children:
        return False
    return None


# ------------------------------------------------------------------------------------------------ attention


def _attention_layout(module: nn.Module) -> dict[str, object] | str:
    """The FrontierAttention fields of a recognised rotary self-attention, or why it is not one."""
    children = dict(module.named_children())
    names = set(children)
    qk_norm = next((pair for pair in _QK_NORMS if set(pair) <= names), None)
    parts = names - set(qk_norm or ())
    own = [n for n, _ in module.named_parameters(recurse=False)]
    head_dim = getattr(module, "head_dim", None)
    if own or not parts <= _ATTENTION_PARTS or not isinstance(head_dim, int):
        return f"layout of {type(module).__name__} not recognised"
    qkv_fused = "qkv_proj" in parts
    if not (qkv_fused or {"q_proj", "k_proj", "v_proj"} <= parts) or not ({"o_proj", "dense"} & parts):
        return f"layout of {type(module).__name__} not recognised"
    if qk_norm is not None:
        if getattr(module, "qk_layernorm", True) is False:
            qk_norm = None  # phi built without them
        elif any(_full_shape(getattr(children[n], "weight", torch.empty(0))) != (head_dim,) for n in qk_norm):
            return f"{type(module).__name__}'s q/k norms are not per head"
    window = getattr(module, "sliding_window", None) if hasattr(module, "sliding_window") else None
    if not hasattr(module, "sliding_window"):
        window = getattr(module.config, "sliding_window", None)  # Mistral, Phi-3 pass the config's
    return {
        "qkv_fused": qkv_fused,
        "out_proj": "o_proj" if "o_proj" in parts else "dense",
        "qk_norm": qk_norm,
        "window": window,
        "softcap": getattr(module, "attn_logit_softcapping", None),
    }


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in ("self_attn", "attn") and hasattr(m, "layer_idx")
    ]


def _attention_fallback(layout: dict[str, object], seq_len: int | None) -> str | None:
    """Why the frontier attention entry cannot fuse this layer (None: it can)."""
    if layout["softcap"] is not None:
        return f"logit softcapping {layout['softcap']:g} -> eager"
    window = layout["window"]
    if window is not None and (seq_len is None or seq_len > window):
        return f"sliding window {window} -> sdpa"
    return None


# ------------------------------------------------------------------------------------------------ routing


class _Probes:
    """The twin probes of one routing (frontier.model.twin_probe), one per distinct class and layout."""

    def __init__(self, model: nn.Module) -> None:
        self.config = getattr(model, "config", None)
        # cos/sin width: the rotary inverse frequencies (Gemma 3: one set per layer type), one per rotated pair
        self.rotary = {2 * b.shape[-1] for n, b in model.named_buffers() if n.endswith("inv_freq")}
        self.seen: dict[tuple[object, ...], str | None] = {}

    def _ask(self, key: tuple[object, ...], probe: Callable[[], str | None]) -> str | None:
        if key not in self.seen:
            self.seen[key] = probe()
        return self.seen[key]

    def mlp(self, module: nn.Module, fields: dict[str, object]) -> str | None:
        original = _original_class(module)
        if self.config is None:
            return f"{original.__name__}: the model has no config to build a twin from"
        key = ("mlp", original, *sorted(fields.items()))
        return self._ask(key, lambda: mlp_disagrees(self.config, original, fields))

    def attention(self, module: nn.Module, layout: dict[str, object]) -> str | None:
        original = _original_class(module)
        if self.config is None:
            return f"{original.__name__}: the model has no config to build a twin from"
        if len(self.rotary) != 1:
            return f"{original.__name__}: no single rotary width among the model's inv_freq buffers"
        (rotary_dim,) = self.rotary
        key = ("attention", original, rotary_dim, *sorted(layout.items()))
        layer = module.layer_idx
        return self._ask(key, lambda: attention_disagrees(self.config, original, layer, layout, rotary_dim))


def route_kernels(model: nn.Module, cfg: KernelsConfig, *, seq_len: int | None = None) -> KernelCoverage:
    """Route every module of `model` that a fused op serves through frontier.kernels; return what was fused.

    Per-op choice from `cfg` ("auto": Triton on CUDA when the kernel handles the inputs, else the op's fallback --
    frontier.kernels.dispatch; "torch": the reference; "triton": the kernel, which then requires CUDA or
    TRITON_INTERPRET=1 and a model whose every candidate module it serves). `seq_len`: the training window, which
    decides whether a sliding window binds (None: assume it does). Idempotent: routing again re-decides.
    """
    coverage = KernelCoverage()
    probes = _Probes(model)
    norms = coverage.op("rms_norm")
    for name, module in model.named_modules():
        if _is_norm(module):
            eps = _norm_eps(module)
            offset = _rms_offset(module, eps)
            if offset is None:
                norms.skip(name, f"{_original_class(module).__name__}: not an RMSNorm")
            elif [n for n, _ in module.named_parameters(recurse=False)] != ["weight"]:  # a bias the probe cannot see
                norms.skip(name, f"{_original_class(module).__name__}: parameters besides its weight")
            else:
                _swap(module, FrontierRMSNorm, kernel_impl=cfg.rms_norm, weight_offset=offset, norm_eps=eps)
                norms.fused.append(name)
        elif name.rsplit(".", 1)[-1] == "mlp":
            layout = _gated_layout(module)
            op = _activation_op(module) if layout is not None else None
            if op is None:
                coverage.op("mlp").skip(name, "not gated by SiLU or tanh GELU")
                continue
            fields = {"kernel_op": op, "fused_gate_up": layout}
            reason = probes.mlp(module, fields)
            if reason is not None:
                coverage.op("mlp").skip(name, reason)
                continue
            _swap(module, FrontierMLP, kernel_impl=getattr(cfg, op), **fields)
            coverage.op(op).fused.append(name)
    ropes, attention = coverage.op("rope"), coverage.op("attention")
    layouts = []
    for name, module in _attention_modules(model):
        if _GPT2_ATTENTION_PARTS == set(dict(module.named_children())):  # learned positions: no rope to route
            layouts.append((name, module, None))
            continue
        layout = _attention_layout(_unrouted(module))
        if isinstance(layout, dict):
            layout = probes.attention(module, layout) or layout  # the twin's disagreement, else the layout
        layouts.append((name, module, layout))
    unknown = next((layout for _, _, layout in layouts if isinstance(layout, str)), None)
    for name, module, layout in layouts:
        if unknown is not None:  # one layout we cannot vouch for: the model keeps its own attention everywhere
            attention.skip(name, unknown)
            if layout is not None:
                ropes.skip(name, unknown)
            continue
        if layout is not None:
            _swap(module, FrontierAttention, rope_impl=cfg.rope, **layout)
            ropes.fused.append(name)
        reason = _attention_fallback(layout, seq_len) if layout is not None else None
        if reason is None:
            attention.fused.append(name)
        else:
            attention.skip(name, reason)
    if layouts and unknown is None:
        register_attention()  # every kernels.attention value is a frontier entry
        model.set_attn_implementation(attention_name(cfg.attention))
    _check_explicit(cfg, coverage)
    return coverage


_OP_KEYS = {"rms_norm": "rms_norm", "swiglu": "swiglu", "geglu": "geglu", "rope": "rope", "attention": "attention"}


def _check_explicit(cfg: KernelsConfig, coverage: KernelCoverage) -> None:
    """kernels.X: triton promises the kernel runs: on a module it cannot serve that is an error, not a fallback."""
    for op_name, key in _OP_KEYS.items():
        if getattr(cfg, key) != "triton":
            continue
        op = coverage.ops.get(op_name)
        related = [op] if op is not None else []
        if op_name in ("swiglu", "geglu"):
            related.append(coverage.ops.get("mlp"))
        for item in related:
            if item is not None and item.unfused:
                reason, names = next(iter(item.unfused.items()))
                raise ConfigError(
                    f"kernels.{key}: 'triton' was requested but the Triton kernel cannot serve {names[0]} "
                    f"({reason}); use 'auto' (fused where it applies) or 'torch'"
                )
        if op is None or not op.fused:
            raise ConfigError(
                f"kernels.{key}: 'triton' was requested but this model has no module the {op_name} kernel serves; "
                "use 'auto' or 'torch'"
            )


def apply_kernels(model: nn.Module, cfg: KernelsConfig, *, seq_len: int | None = None) -> nn.Module:
    """route_kernels, returning the same model object (the coverage: route_kernels)."""
    route_kernels(model, cfg, seq_len=seq_len)
    return model


def coverage_record(coverage: KernelCoverage) -> dict[str, object]:
    """What run.json keeps of a coverage: the line and the counts."""
    return {"line": coverage.line(), "ops": coverage.as_dict()}


__all__ = [
    "FrontierAttention",
    "FrontierMLP",
    "FrontierRMSNorm",
    "KernelCoverage",
    "OpCoverage",
    "apply_kernels",
    "coverage_record",
    "route_kernels",
]
