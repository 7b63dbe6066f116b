"""Kernels by structure, family by family: each tiny family checkpoint (tests/model/families.py) routed through
frontier.kernels says what it fused, gives the stock model's logits and gradients (fp32, Triton interpreter where
the op covers every module), the stock summed loss through the fused linear cross-entropy, and the same tokens
from cached generation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.model.kernels import route_kernels
from frontier.model.loss import IGNORE_INDEX, CausalLMWithLoss
from tests.model.families import FAMILIES, build_checkpoint

SEQ = 32  # longer than the fixtures' sliding windows (16): the window binds

# What routing says for each family at SEQ tokens: the README table's "kernels fused" column.
EXPECTED = {
    "llama2": "rms_norm 5/5, swiglu 2/2, rope 2/2, attention 2/2",
    "llama3": "rms_norm 5/5, swiglu 2/2, rope 2/2, attention 2/2",
    "mistral": "rms_norm 5/5, swiglu 2/2, rope 2/2, attention 0/2 (sliding window 16 -> sdpa: layers 0,1)",
    "qwen2": "rms_norm 5/5, swiglu 2/2, rope 2/2, attention 2/2",
    "qwen3": "rms_norm 9/9, swiglu 2/2, rope 2/2, attention 2/2",
    "phi3": "rms_norm 5/5, swiglu 2/2, rope 2/2, attention 0/2 (sliding window 16 -> sdpa: layers 0,1)",
    "phi2": "rms_norm 0/3 (LayerNorm: not an RMSNorm: 3 modules), mlp 0/2 (not gated by SiLU or tanh GELU: "
    "layers 0,1), rope 2/2, attention 2/2",
    "gemma2": "rms_norm 17/17, geglu 4/4, rope 4/4, attention 0/4 (logit softcapping 50 -> eager: layers 0,1,2,3)",
    "gemma3": "rms_norm 25/25, geglu 4/4, rope 4/4, attention 2/4 (sliding window 16 -> sdpa: layers 0,2)",
    "gpt2": "rms_norm 0/5 (LayerNorm: not an RMSNorm: 5 modules), mlp 0/2 (not gated by SiLU or tanh GELU: "
    "layers 0,1), attention 2/2",
}
OPS = ("rms_norm", "swiglu", "geglu", "rope", "attention")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_checkpoint(name, root / name) for name in FAMILIES}


def _stock(path: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():  # non-trivial norm weights (init is 1, Gemma's 0), so a kernel that ignored them shows
        gen = torch.Generator().manual_seed(3)
        for name, param in model.named_parameters():
            if param.dim() == 1 and "norm" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def _ids(model: torch.nn.Module, batch: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _triton_where_complete(model: torch.nn.Module) -> KernelsConfig:
    """Triton for every op that serves all its modules in this model (the rest: the reference), so that the
    Triton kernels are what is compared wherever they apply."""
    coverage = route_kernels(copy.deepcopy(model), KernelsConfig(**dict.fromkeys(OPS, "torch")), seq_len=SEQ)
    choice = {}
    for op in OPS:
        item = coverage.ops.get(op)
        choice[op] = "triton" if item is not None and item.fused and not item.unfused else "torch"
    return KernelsConfig(**choice, cross_entropy="triton")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_routing_says_what_it_fused(family: str, checkpoints: dict[str, Path]) -> None:
    model = _stock(checkpoints[family])
    assert route_kernels(model, KernelsConfig(), seq_len=SEQ).line() == EXPECTED[family]


def test_a_window_the_sequence_fits_in_is_fused(checkpoints: dict[str, Path]) -> None:
    model = _stock(checkpoints["mistral"])
    assert route_kernels(model, KernelsConfig(), seq_len=16).line().endswith("attention 2/2")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_gradients_equal_stock(family: str, checkpoints: dict[str, Path]) -> None:
    stock = _stock(checkpoints[family])
    routed = copy.deepcopy(stock)
    route_kernels(routed, _triton_where_complete(stock), seq_len=SEQ)
    ids = _ids(stock)
    for model in (stock, routed):
        logits = model(ids).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    torch.testing.assert_close(routed(ids).logits, stock(ids).logits, rtol=1e-4, atol=1e-4)
    grads = dict(stock.named_parameters())
    for name, param in routed.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_linear_cross_entropy_equals_the_models_own_loss(family: str, checkpoints: dict[str, Path]) -> None:
    # the head's bias (phi-2), final-logit softcapping (Gemma 2) and tied embeddings all count
    stock = _stock(checkpoints[family])
    ids = _ids(stock)
    targets = ids.clone()
    targets[:, :3] = IGNORE_INDEX
    own = stock(ids, labels=targets).loss * (targets[:, 1:] != IGNORE_INDEX).sum()  # HF's mean, back to a sum
    shifted = torch.cat([targets[:, 1:], torch.full_like(targets[:, :1], IGNORE_INDEX)], dim=1)
    fused = CausalLMWithLoss(copy.deepcopy(stock), KernelsConfig(fused_linear_cross_entropy=True))
    torch.testing.assert_close(fused(ids, shifted), own, rtol=1e-5, atol=1e-4)


def test_fused_linear_cross_entropy_is_refused_for_a_scaled_head(checkpoints: dict[str, Path]) -> None:
    model = _stock(checkpoints["llama2"])
    model.config.logits_scaling = 4.0  # Granite's head divides its logits
    with pytest.raises(ConfigError, match=r"fused_linear_cross_entropy: .*logits_scaling=4\.0"):
        CausalLMWithLoss(model, KernelsConfig(fused_linear_cross_entropy=True))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_generation_gives_the_stock_tokens(family: str, checkpoints: dict[str, Path]) -> None:
    stock = _stock(checkpoints[family])
    routed = copy.deepcopy(stock)
    route_kernels(routed, KernelsConfig(), seq_len=SEQ)
    prompt = _ids(stock, batch=1, seq=5)
    gen = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)  # past the 16-token windows
    assert torch.equal(routed.generate(prompt, **gen), stock.generate(prompt, **gen))


@pytest.mark.parametrize(
    ("family", "key", "message"),
    [
        ("gemma2", "attention", r"kernels.attention: 'triton' .* model.layers.0.self_attn \(logit softcapping 50"),
        ("mistral", "attention", r"kernels.attention: 'triton' .* \(sliding window 16 -> sdpa\)"),
        ("phi2", "rms_norm", r"kernels.rms_norm: 'triton' .* \(LayerNorm: not an RMSNorm\)"),
        ("gemma2", "swiglu", r"kernels.swiglu: 'triton' .* no module the swiglu kernel serves"),
        ("gpt2", "rope", r"kernels.rope: 'triton' .* no module the rope kernel serves"),
    ],
)
def test_explicit_triton_on_a_module_it_cannot_serve_is_one_error(
    family: str, key: str, message: str, checkpoints: dict[str, Path]
) -> None:
    with pytest.raises(ConfigError, match=message):
        route_kernels(_stock(checkpoints[family]), KernelsConfig(**{key: "triton"}), seq_len=SEQ)
