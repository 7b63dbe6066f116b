"""apply_kernels on a tiny transformers Llama built from config: same logits, same state_dict, per instance."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

import frontier.model.fused_modules as routing
from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.model.attention import attention_name, is_frontier_attention
from frontier.model.kernels import FrontierAttention, FrontierMLP, FrontierRMSNorm, apply_kernels

ALL_TRITON = KernelsConfig(attention="triton", rms_norm="triton", rope="triton", swiglu="triton")
ALL_TORCH = KernelsConfig(attention="torch", rms_norm="torch", rope="torch", swiglu="torch")


def tiny_llama(seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    """2 layers, hidden 64, 4 query heads over 2 KV heads of dim 16, SwiGLU width 96, vocab 128."""
    torch.manual_seed(seed)
    sizes: dict[str, object] = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    config = LlamaConfig(**{**sizes, **overrides}, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so a kernel that ignored them would show
        for module in model.modules():
            if isinstance(module, LlamaRMSNorm):
                module.weight.normal_(1.0, 0.2)
    return model


def _ids(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _positions(*lengths: int) -> torch.Tensor:
    """(1, sum(lengths)) positions restarting at 0 at each packed document."""
    return torch.cat([torch.arange(n) for n in lengths])[None]


def _doc_ids(*lengths: int) -> torch.Tensor:
    """(1, sum(lengths)) document index of each token: what the batch builder hands the model."""
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]


@pytest.fixture
def rope_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rope impl of every frontier.kernels.rope call a patched attention module makes."""
    calls: list[str] = []
    real = routing.rope

    def counting(*args: object, impl: str) -> object:
        calls.append(impl)
        return real(*args, impl=impl)

    monkeypatch.setattr(routing, "rope", counting)
    return calls


@pytest.mark.parametrize("cfg", [ALL_TRITON, ALL_TORCH], ids=["triton", "torch"])
def test_logits_and_gradients_match_the_unpatched_model(cfg: KernelsConfig) -> None:
    base = tiny_llama()
    patched = apply_kernels(copy.deepcopy(base), cfg)
    ids = _ids(2, 13)
    out_base = base(ids, labels=ids)
    out_patched = patched(ids, labels=ids)
    # fp32 end to end: only summation order differs (kernels vs SDPA), well below 1e-5 on O(1) logits.
    torch.testing.assert_close(out_patched.logits, out_base.logits, rtol=1e-5, atol=2e-5)
    out_base.loss.backward()
    out_patched.loss.backward()
    base_params = dict(base.named_parameters())
    for name, param in patched.named_parameters():
        torch.testing.assert_close(param.grad, base_params[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_state_dict_is_unchanged_and_modules_are_swapped() -> None:
    model = tiny_llama()
    before = model.state_dict()
    apply_kernels(model, ALL_TRITON)
    after = model.state_dict()
    assert list(after) == list(before)
    for key, tensor in before.items():
        assert after[key].data_ptr() == tensor.data_ptr() and torch.equal(after[key], tensor), key
    kinds = [type(m) for m in model.modules()]
    routed = [next((f for f in (FrontierRMSNorm, FrontierMLP, FrontierAttention) if isinstance(m, f)), None)
              for m in model.modules()]  # fmt: skip
    assert routed.count(FrontierRMSNorm) == 5 and routed.count(FrontierMLP) == 2
    assert LlamaRMSNorm not in kinds and LlamaMLP not in kinds  # each routed module's class is a frontier subclass
    assert routed.count(FrontierAttention) == 2 and LlamaAttention not in kinds
    assert all(m.rope_impl == "triton" for m in model.modules() if isinstance(m, FrontierAttention))
    # the attention kernel is the name of a registered attention function, in this model's config
    assert model.config._attn_implementation == attention_name("triton") == "frontier_triton"


@pytest.mark.parametrize("impl", ["auto", "triton", "torch", "sdpa"])
def test_each_attention_choice_is_a_registered_name(impl: str) -> None:
    model = apply_kernels(tiny_llama(), KernelsConfig(attention=impl))
    name = model.config._attn_implementation
    assert name == f"frontier_{impl}" and is_frontier_attention(name) and name in AttentionInterface._global_mapping
    assert not is_frontier_attention("sdpa") and not is_frontier_attention("frontier_other")
    with pytest.raises(ValueError, match="kernels.attention"):
        attention_name("flash")


def test_other_models_are_untouched(rope_calls: list[str]) -> None:
    hf_rope = modeling_llama.apply_rotary_pos_emb
    patched, other = tiny_llama(), tiny_llama()
    apply_kernels(patched, ALL_TRITON)
    rope_calls.clear()  # routing's twin probes (frontier.model.twin_probe) run the reference once
    assert other.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, (FrontierRMSNorm, FrontierMLP, FrontierAttention)) for m in other.modules())
    # nothing process-wide: transformers' module-level functions are its own
    assert modeling_llama.apply_rotary_pos_emb is hf_rope and hf_rope.__module__ == modeling_llama.__name__
    ids = _ids(1, 6)
    other(ids)
    assert rope_calls == [], "an unpatched model must use transformers' own rotary embedding"
    patched(ids)
    assert rope_calls == ["triton"] * 2, "each patched attention layer applies frontier.kernels.rope"


def test_sdpa_choice_goes_through_the_one_sdpa_path() -> None:
    # one SDPA path: kernels.attention "sdpa" reaches frontier.kernels.attention.attention_sdpa through the
    # frontier entry (the same one that masks packed documents), not transformers' own attention
    model = apply_kernels(tiny_llama(), KernelsConfig(attention="sdpa", rms_norm="torch", rope="torch", swiglu="torch"))
    assert model.config._attn_implementation == attention_name("sdpa")
    ids = _ids(1, 9)
    # torch references are HF's own formulas and SDPA is HF's: bit-identical logits
    assert torch.equal(model(ids).logits, tiny_llama()(ids).logits)


def test_packed_documents_do_not_attend_across_boundaries() -> None:
    # Two documents packed in one row, their ids handed to the model, positions restarting at the second:
    # each document's logits must equal those of the document run alone.
    model = apply_kernels(tiny_llama(), ALL_TRITON)
    doc_a, doc_b = _ids(1, 7, seed=2), _ids(1, 9, seed=3)
    packed = torch.cat([doc_a, doc_b], dim=1)
    logits = model(packed, position_ids=_positions(7, 9), doc_ids=_doc_ids(7, 9)).logits
    torch.testing.assert_close(logits[:, :7], model(doc_a).logits, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(logits[:, 7:], model(doc_b).logits, rtol=1e-5, atol=2e-5)


def test_packed_documents_stay_apart_under_attention_dropout() -> None:
    # Dropout sends the frontier attention to transformers' SDPA, for which the mask builder left no
    # mask (the kernel path masks documents itself): the document mask must be built there. The
    # dropout pattern depends on the seed and shapes only, so with the same seed the second document's
    # logits cannot change when the first document's tokens do, unless attention crosses the boundary.
    model = apply_kernels(tiny_llama(attention_dropout=0.5), ALL_TORCH).train()
    doc_b = _ids(1, 9, seed=3)
    documents = {"position_ids": _positions(7, 9), "doc_ids": _doc_ids(7, 9)}
    second = []
    for seed in (2, 4):
        torch.manual_seed(0)
        packed = torch.cat([_ids(1, 7, seed=seed), doc_b], dim=1)
        second.append(model(packed, **documents).logits[:, 7:])
    assert torch.equal(second[0], second[1])
    torch.manual_seed(1)  # and the dropout is real: another seed, other logits
    packed = torch.cat([_ids(1, 7, seed=4), doc_b], dim=1)
    assert not torch.allclose(model(packed, **documents).logits[:, 7:], second[1])


@pytest.mark.parametrize("cfg", [ALL_TRITON, ALL_TORCH], ids=["triton", "torch"])
def test_padding_mask_and_generation_fall_back_to_sdpa(cfg: KernelsConfig) -> None:
    # Generation runs with transformers' KV cache (the path a transformers release renamed once,
    # past_key_values -> cache): the patched model must produce the same tokens as the stock one.
    base = tiny_llama()
    model = apply_kernels(copy.deepcopy(base), cfg)
    ids = _ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row
    torch.testing.assert_close(
        model(ids, attention_mask=mask).logits[mask.bool()],
        base(ids, attention_mask=mask).logits[mask.bool()],
        rtol=1e-5,
        atol=2e-5,
    )
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    prompt = _ids(1, 5)
    assert torch.equal(model.generate(prompt, **gen), base.generate(prompt, **gen))
    # a left-padded batch through the cache: masks and positions must agree too
    assert torch.equal(model.generate(ids, attention_mask=mask, **gen), base.generate(ids, attention_mask=mask, **gen))
    # cached decoding gives the logits of a full recompute
    full = base(model.generate(prompt, **gen)).logits
    torch.testing.assert_close(model(model.generate(prompt, **gen)).logits, full, rtol=1e-5, atol=2e-5)


def test_apply_kernels_twice_routes_each_rope_once(rope_calls: list[str]) -> None:
    model = apply_kernels(apply_kernels(tiny_llama(), ALL_TRITON), ALL_TORCH)  # the second choice wins
    rope_calls.clear()  # routing's twin probes (frontier.model.twin_probe) run the reference once
    model(_ids(1, 4))
    assert rope_calls == ["torch"] * 2 and model.config._attn_implementation == "frontier_torch"


def test_explicit_triton_on_a_model_without_llama_modules_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kernels.rms_norm"):
        apply_kernels(torch.nn.Sequential(torch.nn.Linear(2, 2)), KernelsConfig(rms_norm="triton"))
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert apply_kernels(model, KernelsConfig()) is model  # "auto" everywhere: nothing to do


def test_the_callers_document_ids_reach_every_layer_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    # computed once per batch by its builder, the ids are handed down, not found again in each layer
    import frontier.model.attention as entry

    seen = []
    real = entry.attention
    monkeypatch.setattr(entry, "attention", lambda *a, **kw: seen.append(kw["doc_ids"]) or real(*a, **kw))
    model = apply_kernels(tiny_llama(num_hidden_layers=3), ALL_TORCH)
    doc_a, doc_b = _ids(1, 7, seed=2), _ids(1, 9, seed=3)
    doc_ids = _doc_ids(7, 9)
    logits = model(torch.cat([doc_a, doc_b], dim=1), position_ids=_positions(7, 9), doc_ids=doc_ids).logits
    assert len(seen) == 3 and all(d is doc_ids for d in seen)
    torch.testing.assert_close(logits[:, 7:], model(doc_b).logits, rtol=1e-5, atol=2e-5)
    seen.clear()
    model(doc_b)  # no ids: one document per row
    assert seen == [None] * 3


@pytest.mark.parametrize("documents", [[16], [9, 7]], ids=["window-inside-one-document", "two-documents"])
def test_packed_positions_take_the_same_path_when_checkpointed_layers_recompute(documents: list[int]) -> None:
    # Backward recomputes each checkpointed layer after the loss module's call has returned (on a GPU, on
    # autograd's device thread): the recompute must see the forward's document ids (transformers binds the
    # layer's keywords, doc_ids among them, into what it checkpoints), or the saved and the recomputed
    # activations differ (torch's checkpoint raises; commit 657e2d3) or the gradients do.
    from frontier.model.checkpointing import enable_activation_checkpointing
    from frontier.model.loss import CausalLMWithLoss

    base = tiny_llama(num_hidden_layers=2)
    plain = CausalLMWithLoss(apply_kernels(copy.deepcopy(base), ALL_TORCH), ALL_TORCH)
    lm = apply_kernels(copy.deepcopy(base), ALL_TORCH)
    enable_activation_checkpointing(lm)
    checkpointed = CausalLMWithLoss(lm, ALL_TORCH)
    plain.train(), checkpointed.train()
    ids = _ids(2, 17)
    positions = torch.cat([torch.arange(5, 5 + n) for n in documents])[None].expand(2, -1)  # (2, 16)
    doc_ids = _doc_ids(*documents).expand(2, -1)  # (2, 16)
    for module in (plain, checkpointed):
        module(ids[:, :-1], ids[:, 1:], positions, doc_ids).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
