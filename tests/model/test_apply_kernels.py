"""apply_kernels on a tiny transformers Llama built from config: same logits, same state_dict, per instance."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

from frontier.config.kernels import KernelsConfig
from frontier.errors import ConfigError
from frontier.model.kernels import ATTENTION_NAME, FrontierMLP, FrontierRMSNorm, apply_kernels, rope_calls

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
    assert kinds.count(FrontierRMSNorm) == 5 and kinds.count(FrontierMLP) == 2
    assert LlamaRMSNorm not in kinds and LlamaMLP not in kinds
    # attention keeps transformers' own class and forward: only hooks and the attention registry route it
    assert kinds.count(LlamaAttention) == 2
    assert model.config._attn_implementation == "frontier"


def test_other_models_are_untouched() -> None:
    patched, other = tiny_llama(), tiny_llama()
    apply_kernels(patched, ALL_TRITON)
    assert other.config._attn_implementation == "sdpa"
    assert {type(m) for m in other.modules()}.isdisjoint({FrontierRMSNorm, FrontierMLP})
    ids = _ids(1, 6)
    before = rope_calls()
    other(ids)
    assert rope_calls() == before, "an unpatched model must use transformers' own rotary embedding"
    patched(ids)
    assert rope_calls() == before + 2, "each patched attention layer routes its rope to frontier.kernels"


def test_sdpa_choice_goes_through_the_one_sdpa_path() -> None:
    # one SDPA path: kernels.attention "sdpa" reaches frontier.kernels.attention.attention_sdpa through the
    # "frontier" entry (the same one that masks packed documents), not transformers' own attention
    model = apply_kernels(tiny_llama(), KernelsConfig(attention="sdpa", rms_norm="torch", rope="torch", swiglu="torch"))
    assert model.config._attn_implementation == ATTENTION_NAME
    ids = _ids(1, 9)
    # torch references are HF's own formulas and SDPA is HF's: bit-identical logits
    assert torch.equal(model(ids).logits, tiny_llama()(ids).logits)


def test_packed_documents_do_not_attend_across_boundaries() -> None:
    # Two documents packed in one row with position_ids restarting at the second: each document's
    # logits must equal those of the document run alone.
    model = apply_kernels(tiny_llama(), ALL_TRITON)
    doc_a, doc_b = _ids(1, 7, seed=2), _ids(1, 9, seed=3)
    packed = torch.cat([doc_a, doc_b], dim=1)
    position_ids = torch.cat([torch.arange(7), torch.arange(9)])[None]
    logits = model(packed, position_ids=position_ids).logits
    torch.testing.assert_close(logits[:, :7], model(doc_a).logits, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(logits[:, 7:], model(doc_b).logits, rtol=1e-5, atol=2e-5)


def test_packed_documents_stay_apart_under_attention_dropout() -> None:
    # Dropout sends the "frontier" attention to transformers' SDPA, for which the mask builder left no
    # mask (the kernel path masks documents itself): the document mask must be built there. The
    # dropout pattern depends on the seed and shapes only, so with the same seed the second document's
    # logits cannot change when the first document's tokens do, unless attention crosses the boundary.
    model = apply_kernels(tiny_llama(attention_dropout=0.5), ALL_TORCH).train()
    doc_b = _ids(1, 9, seed=3)
    position_ids = torch.cat([torch.arange(7), torch.arange(9)])[None]
    second = []
    for seed in (2, 4):
        torch.manual_seed(0)
        packed = torch.cat([_ids(1, 7, seed=seed), doc_b], dim=1)
        second.append(model(packed, position_ids=position_ids).logits[:, 7:])
    assert torch.equal(second[0], second[1])
    torch.manual_seed(1)  # and the dropout is real: another seed, other logits
    packed = torch.cat([_ids(1, 7, seed=4), doc_b], dim=1)
    assert not torch.allclose(model(packed, position_ids=position_ids).logits[:, 7:], second[1])


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


def test_rope_routing_is_cleared_when_a_forward_fails() -> None:
    model = apply_kernels(tiny_llama(), ALL_TRITON)

    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    # fails inside the attention module's call, after its rope was routed
    model.model.layers[0].self_attn.o_proj.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        model(_ids(1, 4))
    other = tiny_llama()
    before = rope_calls()
    other(_ids(1, 4))
    assert rope_calls() == before, "a failed forward must not leave the rope routed for the next model"


def test_apply_kernels_twice_keeps_one_set_of_hooks() -> None:
    model = apply_kernels(apply_kernels(tiny_llama(), ALL_TRITON), ALL_TRITON)
    before = rope_calls()
    model(_ids(1, 4))
    assert rope_calls() == before + 2


def test_explicit_triton_on_a_model_without_llama_modules_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kernels.rms_norm"):
        apply_kernels(torch.nn.Sequential(torch.nn.Linear(2, 2)), KernelsConfig(rms_norm="triton"))
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert apply_kernels(model, KernelsConfig()) is model  # "auto" everywhere: nothing to do


def test_document_ids_are_found_once_per_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    # finding document ids reads the device (is anything packed?): once per forward, not once per layer
    import frontier.model.kernels as routing

    calls = []
    find = routing.find_packed_sequence_indices
    monkeypatch.setattr(routing, "find_packed_sequence_indices", lambda p: calls.append(p.shape) or find(p))
    model = apply_kernels(tiny_llama(num_hidden_layers=3), ALL_TORCH)
    doc_a, doc_b = _ids(1, 7, seed=2), _ids(1, 9, seed=3)
    position_ids = torch.cat([torch.arange(7), torch.arange(9)])[None]
    logits = model(torch.cat([doc_a, doc_b], dim=1), position_ids=position_ids, use_cache=False).logits
    assert len(calls) == 1
    # the one answer is the right one for every layer: still no attention across the boundary
    torch.testing.assert_close(logits[:, 7:], model(doc_b).logits, rtol=1e-5, atol=2e-5)
    before = len(calls)
    model(torch.cat([doc_a, doc_b], dim=1), position_ids=position_ids.clone(), use_cache=False)
    assert len(calls) == before + 1  # a new forward's positions are looked at again, once


def test_a_caller_that_knows_its_positions_spares_the_device_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # CausalLMWithLoss knows whether it was handed packed positions: the attention then never asks the device
    import frontier.model.kernels as routing
    from frontier.model.loss import CausalLMWithLoss

    def no_read(p):
        raise AssertionError("the attention read the device to find documents")

    model = apply_kernels(tiny_llama(num_hidden_layers=2), ALL_TORCH)
    loss_module = CausalLMWithLoss(model, ALL_TORCH)
    doc_a, doc_b = _ids(1, 7, seed=2), _ids(1, 9, seed=3)
    ids = torch.cat([doc_a, doc_b], dim=1)
    position_ids = torch.cat([torch.arange(7), torch.arange(9)])[None]
    packed = loss_module(ids[:, :-1], ids[:, 1:], position_ids[:, :-1])
    plain = loss_module(ids[:, :-1], ids[:, 1:])
    monkeypatch.setattr(routing, "find_packed_sequence_indices", no_read)
    assert torch.equal(loss_module(ids[:, :-1], ids[:, 1:], position_ids[:, :-1]), packed)  # same documents
    assert torch.equal(loss_module(ids[:, :-1], ids[:, 1:]), plain)
    assert not torch.equal(packed, plain)  # the packed call really kept the two documents apart
    with pytest.raises(AssertionError, match="read the device"):  # outside such a call: unknown, it asks
        model(ids, position_ids=position_ids, use_cache=False)


def test_the_callers_word_holds_only_inside_its_block() -> None:
    import frontier.model.kernels as routing

    def two_documents() -> torch.Tensor:  # (1, 7); a fresh tensor: a decision is kept on the tensor it was made for
        return torch.cat([torch.arange(3), torch.arange(4)])[None]

    with routing.positions_from_caller(packed=False):
        assert routing._doc_ids(two_documents(), 1) is None  # the caller said: nothing packed
        with pytest.raises(RuntimeError), routing.positions_from_caller(packed=True):
            assert torch.equal(routing._doc_ids(two_documents(), 2), torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2))
            raise RuntimeError  # the block ends by an exception: the outer word comes back
        assert routing._doc_ids(two_documents(), 1) is None
    positions = two_documents()
    assert torch.equal(routing._doc_ids(positions, 1), torch.tensor([[0, 0, 0, 1, 1, 1, 1]]))  # unknown: asks
    with routing.positions_from_caller(packed=False):  # the same tensor keeps the answer it was given
        assert torch.equal(routing._doc_ids(positions, 1), torch.tensor([[0, 0, 0, 1, 1, 1, 1]]))


@pytest.mark.parametrize("documents", [[16], [9, 7]], ids=["window-inside-one-document", "two-documents"])
def test_packed_positions_take_the_same_path_when_checkpointed_layers_recompute(documents: list[int]) -> None:
    # Backward recomputes each checkpointed layer after the loss module's block has closed (on a GPU, on
    # autograd's device thread): the recompute must see the forward's document ids, or the saved and the
    # recomputed activations differ (torch's checkpoint raises) or the gradients do.
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
    for module in (plain, checkpointed):
        module(ids[:, :-1], ids[:, 1:], positions).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "rows", [[[0, 1, 2, 0, 1]], [[5, 6, 7, 8, 9]], [[0, 0, 0, 1, 2]], [[3, 4, 0, 1, 2], [0, 1, 2, 3, 4]]]
)
def test_document_index_agrees_with_transformers_rule(rows: list[list[int]]) -> None:
    from transformers.masking_utils import find_packed_sequence_indices

    from frontier.model.kernels import document_index

    positions = torch.tensor(rows)
    theirs = find_packed_sequence_indices(positions)  # None: one document per row
    ours = document_index(positions)
    assert torch.equal(ours, torch.zeros_like(positions)) if theirs is None else torch.equal(ours, theirs)
