"""Packed SFT (finetune.packing: true): examples packed first-fit decreasing into windows, each kept to itself.

The windows are checked against the examples they hold (positions, documents, targets), the loss of a packed
batch against its examples run one by one, unpadded, through the same model with the real routing; then
the stage: determinism, exact resume, a lower held-out loss, micro_batch_size auto, and the padding saved.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from frontier.config import load_params
from frontier.config.kernels import KernelsConfig
from frontier.config.model import ModelConfig
from frontier.errors import ConfigError
from frontier.finetune.dataset import Example, encode_all, read_records, split_file
from frontier.finetune.packing import (
    PackedSampler,
    check_document_masking,
    first_fit_decreasing,
    packed_real_fraction,
    padded_real_fraction,
)
from frontier.finetune.run import finetune
from frontier.model.attention import document_inputs
from frontier.model.build import build_model
from frontier.model.kernels import apply_kernels
from frontier.model.loss import IGNORE_INDEX, CausalLMWithLoss
from tests.finetune.helpers import SHORT, ft_params
from tests.train.helpers import losses, weights

WINDOW = 16
VOCAB = 50
PAD = 0


def _examples(lengths: list[int], seed: int = 0) -> list[Example]:
    """SFT-shaped examples: a masked prompt of about a third, the rest learned (the last target is the example's
    own last token, as encode_record makes it)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(3, VOCAB, size=n + 1)
        prompt = n // 3
        targets = np.where(np.arange(n) >= prompt, ids[1:], IGNORE_INDEX)
        out.append(Example(input_ids=ids[:-1].astype(np.int64), targets=targets.astype(np.int64)))
    return out


LENGTHS = [5, 11, 3, 16, 7, 2, 9, 4, 13, 6, 1, 8, 10, 3, 12, 5]  # one exactly WINDOW long, one of a single token


# --- windows --------------------------------------------------------------------------------------------------


def test_windows_hold_every_example_once_with_restarting_positions_and_document_ids():
    examples = _examples(LENGTHS)
    sampler = PackedSampler(examples, WINDOW, seed=3, pad_id=PAD)
    n = sampler.num_windows
    assert n == -(-sum(LENGTHS) // WINDOW)  # first-fit decreasing fills these lengths without a spare window
    for epoch in range(3):
        seen = []
        for g in range(epoch * n, (epoch + 1) * n):
            members = sampler.windows(epoch)[g - epoch * n]
            w = sampler.sample(g)
            at = 0
            for k, m in enumerate(members):
                e = examples[m]
                size = e.input_ids.size
                assert w.inputs[at : at + size].tolist() == e.input_ids.tolist()
                assert w.targets[at : at + size].tolist() == e.targets.tolist()  # the prompt stays masked
                assert w.positions[at : at + size].tolist() == list(range(size))  # restart at every example
                assert (w.documents[at : at + size] == k).all()
                at += size
            assert at <= WINDOW
            assert (w.inputs[at:] == PAD).all() and (w.targets[at:] == IGNORE_INDEX).all()
            assert w.positions[at:].tolist() == list(range(WINDOW - at))  # padding: a sequence of its own
            assert (w.documents[at:] == len(members)).all()
            assert (np.diff(w.documents) >= 0).all() and w.documents[0] == 0  # what the kernel needs
            seen += members
        assert sorted(seen) == list(range(len(examples)))  # every example exactly once per epoch


def test_document_ids_agree_with_transformers_rule_on_the_positions():
    from transformers.masking_utils import find_packed_sequence_indices

    batch = PackedSampler(_examples(LENGTHS), WINDOW, seed=1, pad_id=PAD).batch(range(12))
    theirs = find_packed_sequence_indices(batch.position_ids)
    assert torch.equal(batch.doc_ids, torch.zeros_like(batch.doc_ids) if theirs is None else theirs)
    assert set(batch.model_inputs(torch.device("cpu"))) == {"input_ids", "targets", "position_ids", "doc_ids"}


def test_first_fit_decreasing_is_deterministic_and_keeps_the_window_count_per_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=300)
    order = rng.permutation(300)
    bins = first_fit_decreasing(lengths, order, 64)
    assert bins == first_fit_decreasing(lengths, order, 64)
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert sorted(i for b in bins for i in b) == list(range(300))
    other = first_fit_decreasing(lengths, rng.permutation(300), 64)
    assert [sorted(lengths[b].tolist()) for b in bins] == [sorted(lengths[b].tolist()) for b in other]
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 64\]"):
        first_fit_decreasing(np.array([65]), np.array([0]), 64)


def test_sampler_is_a_pure_function_of_seed_and_sample_index():
    examples = _examples(LENGTHS * 4, seed=2)
    a, b = PackedSampler(examples, WINDOW, 11, PAD), PackedSampler(examples, WINDOW, 11, PAD)
    c = PackedSampler(examples, WINDOW, 12, PAD)
    n = a.num_windows
    indices = list(range(3 * n))
    for x in ("input_ids", "targets", "position_ids", "doc_ids"):
        assert torch.equal(getattr(a.batch(indices), x), getattr(b.batch(indices), x))
    # read out of order (a resume lands mid-epoch, after the cache saw other epochs): the same windows
    late = PackedSampler(examples, WINDOW, 11, PAD)
    for g in [2 * n + 3, 5, n + 1, 2 * n + 3, 0]:
        assert torch.equal(late.batch([g]).input_ids, a.batch([g]).input_ids)
    assert c.num_windows == n and not torch.equal(c.batch(indices).input_ids, a.batch(indices).input_ids)
    assert not torch.equal(a.batch(range(n)).input_ids, a.batch(range(n, 2 * n)).input_ids)  # epochs differ


def test_a_window_shorter_than_every_example_and_an_example_exactly_the_window(sft, base):
    """Attacker shapes on the demo pairs: cut to a window one token shorter than the shortest pair, every example
    fills a window alone (no padding, positions from 0, one document), its learned tokens cut as unpacked; an
    example of exactly the window's length is never split or padded."""
    from frontier.eval.model_io import load_tokenizer

    tokenizer = load_tokenizer(base)
    records = read_records(split_file(sft, "train"), tokenizer)
    window = min(e.input_ids.size for e in encode_all(tokenizer, records, 10_000, sft)) - 1
    short = encode_all(tokenizer, records, window, sft)  # those with a learned token within the window
    assert short and all(e.input_ids.size == window for e in short)
    sampler = PackedSampler(short, window, seed=0, pad_id=PAD)
    assert sampler.num_windows == len(short) and packed_real_fraction(sampler) == 1.0
    batch = sampler.batch(range(sampler.num_windows))
    assert (batch.position_ids == torch.arange(window)).all() and (batch.doc_ids == 0).all()
    assert sorted(map(tuple, batch.input_ids.tolist())) == sorted(tuple(e.input_ids.tolist()) for e in short)

    exact = _examples([WINDOW, 3, 5])
    s = PackedSampler(exact, WINDOW, seed=0, pad_id=PAD)
    assert s.num_windows == 2
    full = next(w for w in (s.sample(0), s.sample(1)) if w.inputs.tolist() == exact[0].input_ids.tolist())
    assert full.positions.tolist() == list(range(WINDOW)) and (full.documents == 0).all()
    assert full.targets.tolist() == exact[0].targets.tolist()


# --- the loss: packed = one by one ----------------------------------------------------------------------------


def _llama(attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=WINDOW)
    lm = build_model(cfg, VOCAB)
    if attention == "eager":  # transformers' own attention, not routed: documents through its mask builder
        lm.set_attn_implementation("eager")
        return lm
    return apply_kernels(lm, KernelsConfig(attention=attention))  # the real routing (kernels auto)


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return apply_kernels(
        build_model(ModelConfig(arch="gpt2", hidden_size=32, num_layers=2, num_heads=4, max_seq_len=WINDOW), VOCAB),
        KernelsConfig(),
    )


MODELS = {"llama-auto": lambda: _llama("auto"), "llama-eager": lambda: _llama("eager"), "gpt2": _gpt2}


# every attention path with the lm_head loss; the fused linear + cross-entropy loss on the routed Llama
CASES = [(name, False) for name in MODELS] + [("llama-auto", True)]


@pytest.mark.parametrize(("model", "fused"), CASES, ids=[f"{m}-{'fused_ce' if f else 'lm_head'}" for m, f in CASES])
def test_packed_loss_and_gradients_equal_the_examples_run_one_by_one(model, fused):
    _assert_packed_equals_one_by_one(model, fused, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["llama-auto", "gpt2"])
def test_packed_loss_and_gradients_equal_the_examples_run_one_by_one_on_cuda(model):
    """The compiled Triton kernels' document mask (auto: Triton attention, norms and SwiGLU), in fp32."""
    _assert_packed_equals_one_by_one(model, False, torch.device("cuda"))


def _assert_packed_equals_one_by_one(model: str, fused: bool, device: torch.device) -> None:
    """The summed loss of packed windows (CausalLMWithLoss, fp32) = the sum of each example's loss run alone,
    unpadded, from position 0; and the gradients."""
    examples = _examples(LENGTHS)
    sampler = PackedSampler(examples, WINDOW, seed=0, pad_id=PAD)
    chosen = list(range(sampler.num_windows))
    assert max(len(sampler.windows(0)[g]) for g in chosen) >= 3  # windows that hold several examples
    lm = MODELS[model]().to(device)
    if model == "llama-auto":
        assert lm.config._attn_implementation == "frontier_auto"
    module = CausalLMWithLoss(lm, KernelsConfig(cross_entropy="torch", fused_linear_cross_entropy=fused))
    batch = sampler.batch(chosen)
    packed = module(**batch.model_inputs(device))
    packed.backward()
    packed_grads = {k: p.grad.clone() for k, p in module.named_parameters()}
    module.zero_grad()

    alone = torch.zeros((), dtype=torch.float32, device=device)
    for e in examples:  # each alone, unpadded, positions 0..len-1
        ids, targets = (torch.from_numpy(a)[None].to(device) for a in (e.input_ids, e.targets))
        alone = alone + module(ids, targets)
    alone.backward()

    assert packed.dtype == torch.float32 and packed.item() > 0
    with torch.no_grad():  # the test has teeth: ignoring the packing gives another loss
        mixed = module(batch.input_ids.to(device), batch.targets.to(device))
    assert (mixed - alone).abs() > 1e-3
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=0)
    for name, p in module.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("model", list(MODELS))
def test_no_attention_across_examples(model):
    """Perturb one example of a window: the logits of every other example in it stay as they were."""
    sampler = PackedSampler(_examples(LENGTHS), WINDOW, seed=0, pad_id=PAD)
    g = max(range(sampler.num_windows), key=lambda i: len(sampler.windows(0)[i]))
    batch = sampler.batch([g])
    lm = MODELS[model]().eval()

    def logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            extra = document_inputs(lm, batch.doc_ids)
            return lm(input_ids=ids, position_ids=batch.position_ids, use_cache=False, **extra).logits[0]

    before = logits(batch.input_ids)
    docs = batch.doc_ids[0]
    assert int(docs.max()) >= 2
    for k in range(int(docs.max())):  # every example of the window (the last id is padding or an example)
        ids = batch.input_ids.clone()
        ids[0, docs == k] = (ids[0, docs == k] + 7) % (VOCAB - 3) + 3
        after = logits(ids)
        assert not torch.allclose(after[docs == k], before[docs == k])
        torch.testing.assert_close(after[docs != k], before[docs != k], rtol=0, atol=1e-6)


def test_an_attention_that_cannot_mask_documents_is_refused():
    lm = _llama("eager")
    check_document_masking(lm)  # eager: the block-causal mask from its own builder
    check_document_masking(_llama("auto"))
    lm.config._attn_implementation = "flash_attention_2"  # a 2D padding mask only: cannot keep examples apart
    with pytest.raises(ConfigError, match=r"^finetune\.packing: attention 'flash_attention_2' cannot mask packed"):
        check_document_masking(lm)


def test_packing_is_a_validated_bool():
    assert load_params(None, []).finetune.packing is False
    assert load_params(None, ["finetune.packing=true"]).finetune.packing is True
    with pytest.raises(ConfigError, match="packing"):
        load_params(None, ["finetune.packing=sometimes"])


# --- padding --------------------------------------------------------------------------------------------------


def _chat_records(tmp_path, tokenizer):
    """A multi-turn chat set: 200 conversations of 1-4 exchanges, a system prompt in half, replies of varied length."""
    rng = np.random.default_rng(0)
    words = "the a model token window pack loss step value function return list data file code test".split()

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(lo, hi))))

    path = tmp_path / "chat.jsonl"
    with path.open("w") as f:
        for i in range(200):
            msgs = [{"role": "system", "content": text(3, 12)}] if i % 2 else []
            for _ in range(int(rng.integers(1, 5))):
                msgs += [{"role": "user", "content": text(2, 20)}, {"role": "assistant", "content": text(2, 60)}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return read_records(path, tokenizer)


def test_packing_reaches_95_percent_real_tokens_on_the_demo_pairs_and_a_chat_set(sft, base, tmp_path):
    from frontier.eval.model_io import load_tokenizer
    from tests.model.families import build_tokenizer

    tokenizer = load_tokenizer(base)
    records = read_records(split_file(sft, "train"), tokenizer)
    chatml = build_tokenizer("qwen2")
    chats = encode_all(chatml, _chat_records(tmp_path, chatml), 1024, tmp_path)  # 65-870 tokens, median ~300
    measured = {}
    cases = [
        ("pairs@64", encode_all(tokenizer, records, 64, sft), 64),  # the demo's window: the tiny model's context
        ("pairs@512", encode_all(tokenizer, records, 512, sft), 512),  # uncut
        ("chat@1024", chats, 1024),
    ]
    for name, examples, window in cases:
        unpacked = padded_real_fraction(examples, seed=0, micro_batch_size=8)
        packed = packed_real_fraction(PackedSampler(examples, window, seed=0, pad_id=PAD))
        measured[name] = (unpacked, packed)
        assert packed >= 0.95 and packed >= unpacked, (name, unpacked, packed)
    # at the tiny model's 64 tokens nearly every pair is cut to the window: little to gain; uncut, packing wins
    assert measured["pairs@512"][0] < 0.8 and measured["chat@1024"][0] < 0.8
    print("real-token fraction (unpacked, packed):", measured)


# --- the stage ------------------------------------------------------------------------------------------------

PACKED = ("finetune.packing=true", "finetune.method=full", "finetune.lr=3e-3")  # test_full's run, packed


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory, sft, base):
    """A packed full fine-tune of 6 steps on the demo pairs."""
    root = tmp_path_factory.mktemp("packed")
    params = ft_params(*PACKED, *SHORT)
    metrics = finetune(params, base, sft, root / "out", root / "ckpt")
    return {"root": root, "params": params, "metrics": metrics}


@pytest.fixture(scope="module")
def short_sft(tmp_path_factory, sft):
    """The demo pairs cut short (the signature's start -> the first body line's start): several pairs per 64-token
    window."""
    root = tmp_path_factory.mktemp("short_sft")
    for split in ("train", "heldout"):
        rows = [json.loads(line) for line in (sft / f"{split}.jsonl").read_text().splitlines()]
        cut = [{"prompt": r["prompt"].split("\n")[0][:24] + "\n", "response": r["response"].split("\n")[0][:16]}
               for r in rows]  # fmt: skip
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cut))
    return root


@pytest.fixture(scope="module")
def packed_short_run(tmp_path_factory, short_sft, base):
    """A packed full fine-tune of 6 steps on the short pairs, a checkpoint every 3 (what the resume test restarts
    from)."""
    root = tmp_path_factory.mktemp("packed_short")
    params = ft_params(*PACKED, *SHORT, "finetune.checkpoint_every=3")
    metrics = finetune(params, base, short_sft, root / "out", root / "ckpt")
    return {"root": root, "params": params, "metrics": metrics}


def test_a_packed_run_on_the_demo_pairs_lowers_the_heldout_loss_and_reports_the_padding(packed_run):
    m, out = packed_run["metrics"], packed_run["root"] / "out"
    assert m["finetuned_heldout_loss"] < m["base_heldout_loss"] - 0.1  # ~4.72 -> ~4.47 measured
    assert m["packing"] is True and json.loads((out / "run.json").read_text())["packing"] is True
    written = json.loads((out / "metrics.json").read_text())
    assert written["padding_fraction_packed"] == m["padding_fraction_packed"] <= 0.05
    assert written["padding_fraction_unpacked"] >= m["padding_fraction_packed"]  # equal: most pairs fill 64 tokens


def test_short_pairs_pack_several_to_a_window_and_still_learn(packed_short_run, short_sft, base):
    from frontier.eval.model_io import load_tokenizer

    m = packed_short_run["metrics"]
    tokenizer = load_tokenizer(base)
    examples = encode_all(tokenizer, read_records(short_sft / "train.jsonl", tokenizer), 64, short_sft)
    sampler = PackedSampler(examples, 64, seed=packed_short_run["params"].seed, pad_id=PAD)
    assert len(examples) == m["train_pairs"] >= 1.8 * sampler.num_windows  # about two examples to a window
    assert m["padding_fraction_packed"] == pytest.approx(1 - packed_real_fraction(sampler))
    assert m["padding_fraction_unpacked"] == pytest.approx(1 - padded_real_fraction(examples, sampler.seed, 8))
    assert m["finetuned_heldout_loss"] < m["base_heldout_loss"] - 0.1


def test_a_packed_resume_from_a_mid_run_checkpoint_is_exact(packed_short_run, short_sft, base, tmp_path, caplog):
    """The run's checkpoints with the last one gone: the rerun resumes at step 3 and reproduces steps 4-6 and the
    final weights bit for bit."""
    packed_run, sft = packed_short_run, short_sft
    ckpt = tmp_path / "ckpt"
    shutil.copytree(packed_run["root"] / "ckpt", ckpt)
    shutil.rmtree(ckpt / "step_00000006")
    with caplog.at_level(logging.INFO, logger="frontier.finetune"):
        again = finetune(packed_run["params"], base, sft, tmp_path / "out", ckpt)
    assert f"resumed from {ckpt / 'step_00000003'} at step 3" in caplog.text
    assert again["steps"] == 6
    straight = packed_run["root"] / "out"
    assert losses(tmp_path / "out") == losses(straight)
    w1, w2 = weights(straight), weights(tmp_path / "out")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_packing_with_micro_batch_auto_gives_the_fixed_splits_losses(
    packed_short_run, short_sft, base, tmp_path, monkeypatch
):
    """micro_batch_size auto sizes for the packed window; on a budget with room for 2 windows the global batch of 8
    is 2 x 4, with the same windows per step as the fixed 8 x 1."""
    import frontier.train.batches.batch_size as bs

    within = bs.largest_within
    monkeypatch.setattr(
        bs, "largest_within", lambda estimate, budget, options: within(estimate, estimate.at(2), options)
    )
    params = ft_params(*PACKED, *SHORT, "finetune.micro_batch_size=auto", "finetune.global_batch_size=8")
    chosen = finetune(params, base, short_sft, tmp_path / "auto", tmp_path / "ckpt_auto")
    assert chosen["batch"] == {"micro_batch_size": 2, "grad_accum_steps": 4, "chosen_by": "cpu budget"}
    fixed = packed_short_run["root"] / "out"
    torch.testing.assert_close(losses(tmp_path / "auto"), losses(fixed), rtol=1e-5, atol=0)
