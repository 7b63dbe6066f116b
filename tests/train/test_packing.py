"""Packed documents (train.document_aware: true): windows full of whole documents, the model kept to each.

The windows are checked against an oracle written here from the raw stream and docs.npy (not from
the sampler's own document index), and the loss of a packed batch against its documents run one by
one through the same model, for every attention path a Llama or GPT-2 model can take.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from frontier.config.kernels import KernelsConfig
from frontier.config.model import ModelConfig
from frontier.data.tokens import TokenShards, write_split
from frontier.errors import DataError
from frontier.model.build import build_model
from frontier.model.kernels import apply_kernels
from frontier.model.loss import IGNORE_INDEX, CausalLMWithLoss
from frontier.train.batches.data import WindowSampler

SEQ = 8
VOCAB = 50
PAD = 0

# attacker shapes: one document spanning several windows, one-token documents, empty documents,
# lengths 1..SEQ whose boundaries hit every residue mod SEQ (so some window ends exactly at one)
CORPORA = {
    "mixed": [5, 1, 12, 40, 3, 8, 1, 1, 17, 8, 3],  # 99 tokens: the last window is padded
    "one_long_document": [100],
    "long_then_short": [3, 61, 2],
    "one_token_documents": [1] * 20 + [9],
    "empty_documents": [0, 4, 0, 0, 9, 0, 11, 0],
    "every_residue": [1, 2, 3, 4, 5, 6, 7, 8, 9],
}


def _split(root: Path, lengths: list[int], seed: int = 0) -> TokenShards:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(3, VOCAB, size=n) for n in lengths]
    name = f"split_{len(list(root.iterdir()))}"
    # 7-token shards: windows cross shard boundaries as well as document boundaries
    write_split(root / name, docs, vocab_size=VOCAB, eos_id=2, pad_id=PAD, shard_tokens=7)
    return TokenShards(root / name)


def _oracle(shards: TokenShards, start: int, length: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(inputs, targets, positions, stream index of each input), each SEQ long, by walking the stream."""
    stream = shards.read(0, shards.num_tokens).tolist()
    n = len(stream)
    starts = {int(s) for s in np.asarray(shards.doc_starts) if s < n} | {0}
    ring = [(start + j) % n for j in range(length)]
    inputs, targets, positions, where = [], [], [], []
    pos = 0
    for j in range(length - 1):
        if j > 0 and ring[j] in starts:
            pos = 0
        inputs.append(stream[ring[j]])
        targets.append(IGNORE_INDEX if ring[j + 1] in starts else stream[ring[j + 1]])
        positions.append(pos)
        where.append(ring[j])
        pos += 1
    pad = SEQ - len(inputs)
    return inputs + [PAD] * pad, targets + [IGNORE_INDEX] * pad, positions + list(range(pad)), where


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TokenShards]:
    root = tmp_path_factory.mktemp("packing")
    return {name: _split(root, lengths) for name, lengths in CORPORA.items()}


@pytest.mark.parametrize("name", list(CORPORA))
def test_windows_match_the_oracle_and_an_epoch_covers_every_token_once(splits, name):
    shards = splits[name]
    n = shards.num_tokens
    sampler = WindowSampler(shards, SEQ, seed=3, document_aware=True)
    starts = {int(s) for s in np.asarray(shards.doc_starts) if s < n} | {0}
    assert sampler.num_windows == -(-n // SEQ)
    for epoch in (0, 1, 2):
        seen_inputs, seen_targets, padded = Counter(), Counter(), 0
        for g in range(epoch * sampler.num_windows, (epoch + 1) * sampler.num_windows):
            start, length = sampler.cut(g)
            inputs, targets, positions, where = _oracle(shards, start, length)
            w = sampler.sample(g)
            assert w.inputs.tolist() == inputs and w.targets.tolist() == targets and w.positions.tolist() == positions
            # one document per run of positions from 0 (the padding is one more): ids count the restarts
            assert w.documents.tolist() == (np.cumsum(np.asarray(positions) == 0) - 1).tolist()
            seen_inputs.update(where)
            seen_targets.update((i + 1) % n for i, t in zip(where, targets) if t != IGNORE_INDEX)
            padded += SEQ - len(where)
        assert seen_inputs == Counter(range(n))  # every token is an input exactly once per epoch
        assert seen_targets == Counter(i for i in range(n) if i not in starts)  # every predictable token once
        assert padded == sampler.num_windows * SEQ - n < SEQ  # padding only in the epoch's last window


def test_positions_restart_exactly_at_document_starts_and_targets_never_cross(splits):
    shards = splits["every_residue"]
    sampler = WindowSampler(shards, SEQ, seed=5, document_aware=True)
    n = shards.num_tokens
    starts = set(np.asarray(shards.doc_starts).tolist())
    ends_at_boundary = 0
    for g in range(3 * sampler.num_windows):
        start, length = sampler.cut(g)
        ring = [(start + j) % n for j in range(length)]
        w = sampler.sample(g)
        real = length - 1
        restarts = [j for j in range(SEQ) if w.positions[j] == 0]
        assert restarts == sorted({0} | {j for j in range(1, real) if ring[j] in starts} | ({real} - {SEQ}))
        for j in range(real):
            crosses = ring[j + 1] in starts
            assert (w.targets[j] == IGNORE_INDEX) == crosses
        ends_at_boundary += ring[-1] in starts and real == SEQ
    assert ends_at_boundary > 0  # some full window ends exactly at a document boundary (last target ignored)


def test_a_document_longer_than_several_windows_continues_from_window_to_window(splits):
    shards = splits["one_long_document"]  # 100 tokens, one document
    sampler = WindowSampler(shards, SEQ, seed=0, document_aware=True)
    offset = sampler._perm(0)[0]
    stream = shards.read(0, shards.num_tokens)
    by_start = {sampler.cut(g)[0]: sampler.sample(g) for g in range(sampler.num_windows)}
    w = by_start[(offset + SEQ) % 100]  # the window after the first one: mid-document on both sides
    assert w.positions.tolist() == list(range(SEQ)) and IGNORE_INDEX not in w.targets.tolist()
    assert w.targets.tolist() == stream[offset + SEQ + 1 : offset + 2 * SEQ + 1].tolist()


def test_real_tokens_are_at_least_95_percent_on_a_synthetic_corpus(tmp_path):
    rng = np.random.default_rng(1)
    shards = _split(tmp_path, rng.integers(1, 60, size=300).tolist())
    seq = 16
    sampler = WindowSampler(shards, seq, seed=0, document_aware=True)
    batch = sampler.batch(range(sampler.num_windows))  # one epoch
    real = sum(sampler.cut(g)[1] - 1 for g in range(sampler.num_windows))
    assert real == shards.num_tokens and batch.input_ids.numel() - real < seq
    assert real / batch.input_ids.numel() >= 0.95
    # the old scheme (one document per window, padded) would have been far below this on such lengths
    targets = int((batch.targets != IGNORE_INDEX).sum())
    assert targets == shards.num_tokens - len(set(np.asarray(shards.doc_starts).tolist()))


def test_packing_is_deterministic_and_seeded(splits):
    shards = splits["mixed"]
    a = WindowSampler(shards, SEQ, 11, True).batch(range(40))
    b = WindowSampler(shards, SEQ, 11, True).batch(range(40))
    c = WindowSampler(shards, SEQ, 12, True).batch(range(40))
    for x in ("input_ids", "targets", "position_ids", "doc_ids"):
        assert torch.equal(getattr(a, x), getattr(b, x))
    assert not torch.equal(a.input_ids, c.input_ids)


@pytest.mark.parametrize("name", list(CORPORA))
def test_document_ids_agree_with_transformers_rule_on_the_positions(splits, name):
    # the batch's ids and positions are two views of the same document starts: transformers' packed-sequence
    # rule (a new sequence wherever a position is not its left neighbour's + 1) reads the same documents
    from transformers.masking_utils import find_packed_sequence_indices

    batch = WindowSampler(splits[name], SEQ, 7, True).batch(range(24))
    assert batch.doc_ids.shape == batch.position_ids.shape and batch.doc_ids.dtype == torch.int64
    assert (batch.doc_ids[:, 0] == 0).all() and (batch.doc_ids.diff(dim=-1) >= 0).all()  # what the kernel needs
    theirs = find_packed_sequence_indices(batch.position_ids)  # None: one document in every row
    assert torch.equal(batch.doc_ids, torch.zeros_like(batch.doc_ids) if theirs is None else theirs)
    assert set(batch.model_inputs(torch.device("cpu"))) == {"input_ids", "targets", "position_ids", "doc_ids"}


@pytest.mark.parametrize(
    ("lengths", "ok"),
    [([], False), ([0, 0], False), ([SEQ], False), ([SEQ + 1], True), ([1] * (SEQ + 1), True)],
    ids=["empty_split", "only_empty_documents", "seq_len_tokens", "seq_len_plus_one", "one_token_documents"],
)
def test_too_small_splits_are_one_data_error(tmp_path, lengths, ok):
    if not lengths:
        write_split(tmp_path / "e", [], vocab_size=VOCAB, eos_id=2, pad_id=PAD)
        shards = TokenShards(tmp_path / "e")
    else:
        shards = _split(tmp_path, lengths)
    if ok:
        sampler = WindowSampler(shards, SEQ, 0, True)
        assert sampler.num_windows == 2 and sampler.batch(range(4)).input_ids.shape == (4, SEQ)
        return
    with pytest.raises(DataError, match=rf"too few for one window of seq_len={SEQ} \(need at least {SEQ + 1}\)"):
        WindowSampler(shards, SEQ, 0, True)


# --- the loss of a packed batch is the sum of its documents' losses -----------------------------------------


def _pieces(shards: TokenShards, sampler: WindowSampler, g: int) -> list[np.ndarray]:
    """The pieces of documents window g holds (the +1 target token included), from the stream and docs.npy."""
    start, length = sampler.cut(g)
    n = shards.num_tokens
    stream = shards.read(0, n)
    starts = set(np.asarray(shards.doc_starts).tolist())
    ring = [(start + j) % n for j in range(length)]
    cuts = [0] + [j for j in range(1, length) if ring[j] in starts] + [length]
    return [stream[[ring[j] for j in range(a, b)]] for a, b in zip(cuts, cuts[1:])]


def _llama(attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=SEQ)
    lm = build_model(cfg, VOCAB)
    if attention == "eager":  # transformers' own eager attention, no frontier routing
        lm.set_attn_implementation("eager")
        return lm
    rope = "triton" if attention == "triton" else "torch"  # the Triton rope reads per-row packed positions
    return apply_kernels(lm, KernelsConfig(attention=attention, rope=rope))


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="gpt2", hidden_size=32, num_layers=2, num_heads=4, max_seq_len=SEQ), VOCAB)


def _checkpointed(lm: torch.nn.Module) -> torch.nn.Module:
    """Activation checkpointing: the recomputed layers must get the positions and document ids again."""
    from frontier.model.checkpointing import enable_activation_checkpointing

    enable_activation_checkpointing(lm)
    assert lm.is_activation_checkpointing
    return lm.train()


MODELS = {
    "llama-torch": lambda: _llama("torch"),
    "llama-torch-checkpointed": lambda: _checkpointed(_llama("torch")),
    "llama-auto": lambda: _llama("auto"),
    "llama-sdpa": lambda: _llama("sdpa"),
    "llama-eager": lambda: _llama("eager"),
    "llama-triton": lambda: _llama("triton"),
    "gpt2": _gpt2,
}


# every attention path with the lm_head loss; the fused linear + CE loss on one path per architecture
CASES = [(name, False) for name in MODELS] + [("llama-torch", True), ("gpt2", True)]


@pytest.mark.parametrize(("model", "fused"), CASES, ids=[f"{m}-{'fused_ce' if f else 'lm_head'}" for m, f in CASES])
def test_packed_loss_and_gradients_equal_the_documents_run_one_by_one(splits, model, fused):
    _assert_packed_equals_one_by_one(splits["mixed"], model, fused, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["llama-auto", "llama-triton", "gpt2"])
def test_packed_loss_and_gradients_equal_the_documents_run_one_by_one_on_cuda(splits, model):
    """The compiled Triton kernels' document mask (auto: Triton attention, norms and SwiGLU), in fp32."""
    _assert_packed_equals_one_by_one(splits["mixed"], model, False, torch.device("cuda"))


def _assert_packed_equals_one_by_one(shards: TokenShards, model: str, fused: bool, device: torch.device) -> None:
    sampler = WindowSampler(shards, SEQ, seed=3, document_aware=True)
    # full windows where later documents have tokens to predict (cross-document attention would change
    # their loss), one with a one-token document, and the padded last window
    full = [g for g in range(sampler.num_windows) if sampler.cut(g)[1] == SEQ + 1]
    later = {g: sum(len(p) > 1 for p in _pieces(shards, sampler, g)[1:]) for g in full}
    rich = sorted(full, key=lambda g: -later[g])[:2]
    tiny = next(g for g in full if any(len(p) == 1 for p in _pieces(shards, sampler, g)[:-1]))
    last = next(g for g in range(sampler.num_windows) if sampler.cut(g)[1] < SEQ + 1)
    chosen = list(dict.fromkeys([*rich, tiny, last]))
    pieces = [p for g in chosen for p in _pieces(shards, sampler, g)]
    assert later[rich[1]] >= 2 and len(chosen) == 4

    lm = MODELS[model]().to(device)
    module = CausalLMWithLoss(lm, KernelsConfig(cross_entropy="torch", fused_linear_cross_entropy=fused))
    batch = sampler.batch(chosen)
    packed = module(**batch.model_inputs(device))
    packed.backward()
    packed_grads = {k: p.grad.clone() for k, p in module.named_parameters()}
    module.zero_grad()

    alone = torch.zeros((), dtype=torch.float32, device=device)
    for piece in pieces:
        if len(piece) < 2:
            continue  # a one-token piece predicts nothing, alone or packed
        ids = torch.from_numpy(piece).long()[None].to(device)  # (1, len); positions default to 0..len-1
        alone = alone + module(ids[:, :-1], ids[:, 1:])
    alone.backward()

    assert packed.item() > 0
    # the batch is one where ignoring the document structure shows: plain positions give another loss
    with torch.no_grad():
        unpacked = module(batch.input_ids.to(device), batch.targets.to(device))
    assert (unpacked - alone).abs() > 1e-3
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    for name, p in module.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
