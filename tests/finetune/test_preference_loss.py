"""DPO and ORPO math against a float64 direct computation (ORPO's NLL term both ways, preference.orpo_nll: the
paper's and TRL's, on a real tiny model), preference records and batches, and the refusals (bad records, bad
config, a tampered reference cache)."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from frontier.config import ConfigError, load_params
from frontier.errors import DataError
from frontier.finetune.preference import read_cache, write_cache
from frontier.finetune.preference_data import Pair, collate_pairs, pair_eval_batches, read_pairs
from frontier.finetune.preference_loss import (
    PreferenceLoss,
    dpo_terms,
    orpo_terms,
    sequence_targets,
    summarize,
    token_logps,
)
from frontier.model.loss import IGNORE_INDEX
from frontier.train.batches.data import Layout
from tests.model.families import build_checkpoint


class FixedLogits(nn.Module):
    """A stand-in LM whose forward returns the given logits whatever the inputs."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=self.logits)


def random_case(seed: int, pairs: int = 3, width: int = 7, vocab: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * pairs, width, vocab, generator=g) * 3
    targets = torch.randint(0, vocab, (2 * pairs, width), generator=g)
    for row in range(2 * pairs):  # a prompt of 1-3 masked positions, then a completion, then padding
        start, end = 1 + row % 3, width - (row % 2)
        targets[row, :start] = IGNORE_INDEX
        targets[row, end:] = IGNORE_INDEX
    return logits, targets


def direct_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per row: the sum of the learned targets' log-probs, one position at a time, in float64."""
    sums, counts = [], []
    for row in range(logits.shape[0]):
        s, n = 0.0, 0
        for t in range(logits.shape[1]):
            y = int(targets[row, t])
            if y == IGNORE_INDEX:
                continue
            z = logits[row, t].double()
            s += float(z[y] - torch.logsumexp(z, 0))
            n += 1
        sums.append(s)
        counts.append(n)
    return sums, counts


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_loss_rewards_margins_accuracy_equal_float64(seed):
    logits, targets = random_case(seed)
    pairs, beta = logits.shape[0] // 2, 0.3
    sums, _ = direct_logps(logits, targets)
    ref = [s + float(d) for s, d in zip(sums, torch.randn(2 * pairs, generator=torch.Generator().manual_seed(9)))]
    want = []
    for i in range(pairs):
        rc, rr = beta * (sums[i] - ref[i]), beta * (sums[pairs + i] - ref[pairs + i])
        want.append((-logsigmoid(rc - rr), rc, rr))
    module = PreferenceLoss(FixedLogits(logits), "dpo", beta, 0.1)
    ones = torch.ones(pairs)
    total = module(torch.zeros_like(targets), targets, ones, ref_logps=torch.tensor(ref, dtype=torch.float64))
    with pytest.raises(ValueError, match="reference log-probabilities"):
        module(torch.zeros_like(targets), targets, ones)  # DPO pairs without their reference: refused
    assert float(total.detach()) == pytest.approx(sum(w[0] for w in want), abs=1e-5)
    stats = summarize(module.tally["train"])
    assert stats["pairs"] == pairs
    assert stats["rewards_chosen"] == pytest.approx(np.mean([w[1] for w in want]), abs=1e-6)
    assert stats["rewards_rejected"] == pytest.approx(np.mean([w[2] for w in want]), abs=1e-6)
    assert stats["margins"] == pytest.approx(np.mean([w[1] - w[2] for w in want]), abs=1e-6)
    assert stats["accuracy"] == pytest.approx(np.mean([w[1] > w[2] for w in want]))
    # the pure terms in float64 match to rounding
    s = torch.tensor(sums, dtype=torch.float64)
    r = torch.tensor(ref, dtype=torch.float64)
    loss, rc, rr = dpo_terms(s[:pairs], s[pairs:], r[:pairs], r[pairs:], beta)
    np.testing.assert_allclose(loss.numpy(), [w[0] for w in want], rtol=0, atol=1e-12)
    np.testing.assert_allclose(rc.numpy(), [w[1] for w in want], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orpo_loss_equals_the_papers_formula_in_float64(seed):
    logits, targets = random_case(seed)
    pairs, lam = logits.shape[0] // 2, 0.25
    sums, counts = direct_logps(logits, targets)
    want = []
    for i in range(pairs):
        mc, mr = sums[i] / counts[i], sums[pairs + i] / counts[pairs + i]
        odds_c = math.log(math.exp(mc) / (1 - math.exp(mc)))
        odds_r = math.log(math.exp(mr) / (1 - math.exp(mr)))
        want.append((-mc - lam * logsigmoid(odds_c - odds_r), lam * mc, lam * mr))
    module = PreferenceLoss(FixedLogits(logits), "orpo", 0.1, lam)
    weight = torch.tensor([1.0, 0.0, 1.0])  # a filler pair (weight 0) adds nothing
    total = module(torch.zeros_like(targets), targets, weight=weight)
    assert float(total.detach()) == pytest.approx(want[0][0] + want[2][0], abs=1e-5)
    stats = summarize(module.tally["train"])
    assert stats["pairs"] == 2
    assert stats["rewards_chosen"] == pytest.approx((want[0][1] + want[2][1]) / 2, abs=1e-6)
    s, n = (torch.tensor(x, dtype=torch.float64) for x in direct_logps(logits, targets))
    loss, _, _ = orpo_terms(s[:pairs], s[pairs:], n[:pairs], n[pairs:], lam)
    np.testing.assert_allclose(loss.numpy(), [w[0] for w in want], rtol=0, atol=1e-12)


def test_orpo_odds_ratio_term_equals_trl_orpo_trainer():
    """TRL 1.16 ships ORPO under trl.experimental: its odds-ratio term and rewards from mean log-probs equal ours
    (its NLL differs by design: TRL averages over prompt + response tokens of the whole batch; we follow the paper,
    the chosen completion's mean token NLL per pair)."""
    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    g = torch.Generator().manual_seed(3)
    m_c, m_r = (
        -torch.rand(5, generator=g, dtype=torch.float64) * 4,
        -torch.rand(5, generator=g, dtype=torch.float64) * 4,
    )
    lam = 0.2
    fake = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device=torch.device("cpu")))
    ratio_term, r_c, r_r, _, _ = orpo.ORPOTrainer.odds_ratio_loss(fake, m_c, m_r)
    ones = torch.ones(5, dtype=torch.float64)
    loss, ours_c, ours_r = orpo_terms(m_c, m_r, ones, ones, lam)
    np.testing.assert_allclose((loss + m_c).numpy(), (-ratio_term).double().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_c.numpy(), r_c.double().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_r.numpy(), r_r.double().numpy(), rtol=0, atol=1e-6)


def test_token_logps_equal_float64():
    logits, targets = random_case(5)
    sums, counts = token_logps(logits, targets)
    want_s, want_n = direct_logps(logits, targets)
    np.testing.assert_allclose(sums.double().numpy(), want_s, rtol=0, atol=1e-5)
    assert counts.tolist() == want_n


def test_chosen_equal_rejected_is_allowed_and_teaches_nothing():
    """A pair whose completions are the same: DPO's loss is log 2 with zero gradient (a warning in the stage)."""
    logits, targets = random_case(0, pairs=1)
    targets[1] = targets[0]
    logits = logits.clone()
    logits[1] = logits[0]
    module = PreferenceLoss(FixedLogits(logits), "dpo", 0.1, 0.1)
    ref = torch.tensor([-3.0, -3.0], dtype=torch.float64)
    total = module(torch.zeros_like(targets), targets, torch.ones(1), ref_logps=ref)
    total.backward()
    assert float(total.detach()) == pytest.approx(math.log(2), abs=1e-6)
    grad = module.lm.logits.grad
    assert float(grad.abs().max()) > 1e-3  # each row is pushed...
    assert float((grad[0] + grad[1]).abs().max()) < 1e-7  # ...equally both ways: weights both rows share stay


# -- records and batches -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_checkpoint("qwen2", tmp_path_factory.mktemp("q") / "m")


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_plain_pair_tokenizes_as_trl_and_batches_chosen_then_rejected(qwen, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "def f(x):\n", "chosen": "    return x\n", "rejected": "1"}])
    (pair,) = read_pairs(path, qwen, 64)
    prompt_ids = qwen("def f(x):\n", add_special_tokens=False)["input_ids"]
    full = qwen("def f(x):\n    return x\n" + qwen.eos_token, add_special_tokens=False)["input_ids"]
    assert pair.prompt.tolist() == prompt_ids and pair.chosen.tolist() == full[len(prompt_ids) :]
    assert pair.chosen[-1] == pair.rejected[-1] == qwen.eos_token_id
    batch = collate_pairs([pair, pair], pad_id=0)
    assert batch.input_ids.shape[0] == 4 and batch.num_targets == 2  # pairs, not tokens
    learned = (batch.targets[0] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert batch.targets[0, learned].tolist() == pair.chosen.tolist()
    assert learned[0] == pair.prompt.size - 1  # the last prompt position predicts the first completion token


def test_message_pair_uses_the_chat_template(qwen, tmp_path):
    rec = {
        "prompt": [{"role": "user", "content": "Name a mutable type."}],
        "chosen": [{"role": "assistant", "content": "list"}],
        "rejected": [{"role": "assistant", "content": "tuple"}],
    }
    (pair,) = read_pairs(write_jsonl(tmp_path / "m.jsonl", [rec]), qwen, 128)
    gen = qwen.apply_chat_template(rec["prompt"], tokenize=False, add_generation_prompt=True)
    assert qwen.decode(pair.prompt.tolist()) == gen
    assert qwen.decode(pair.chosen.tolist()).startswith("list<|im_end|>")


ORPO_RECORDS = [
    {"prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": "    return a - b\n"},
    {"prompt": "x = [1, 2, 3]\nprint(", "chosen": "len(x))\n", "rejected": "x[3])\n"},
    {"prompt": "# greet\ndef greet(name):\n", "chosen": "    return f'Hi, {name}!'\n", "rejected": "    pass\n"},
]  # prompts and completions of different lengths: pooling over tokens and averaging per pair tell apart


def by_hand(lm, pair) -> list[list[float]]:
    """Chosen, rejected: each token's log-prob given the ones before it (tokens 1..L-1 of prompt + completion),
    float64 log-softmax of one unpadded forward per sequence."""
    out = []
    for completion in (pair.chosen, pair.rejected):
        ids = np.concatenate((pair.prompt, completion))
        with torch.no_grad():
            logits = lm(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        out.append([float(logp[j - 1, ids[j]]) for j in range(1, ids.size)])
    return out


def orpo_by_hand(lm, pairs, lam: float, nll: str) -> tuple[float, float, float]:
    """Mean ORPO loss over `pairs`, mean chosen and rejected rewards: Hong et al. 2024, eqs. 4-7, written out.
    nll "response": the paper's L_SFT, each pair's mean NLL of its chosen completion; "sequence": TRL's, the
    token NLL of every chosen prompt + completion, pooled."""
    losses, rewards_c, rewards_r, seq_sum, seq_n = [], [], [], 0.0, 0
    for pair in pairs:
        (tok_c, tok_r), k = by_hand(lm, pair), pair.prompt.size - 1  # the completion's first token is tokens[k]
        m_c, m_r = np.mean(tok_c[k:]), np.mean(tok_r[k:])
        odds = lambda m: math.exp(m) / (1.0 - math.exp(m))  # noqa: E731  (P / (1 - P), P the mean token prob)
        ratio = logsigmoid(math.log(odds(m_c) / odds(m_r)))
        losses.append((-m_c if nll == "response" else 0.0) - lam * ratio)
        rewards_c.append(lam * m_c)
        rewards_r.append(lam * m_r)
        seq_sum, seq_n = seq_sum + sum(tok_c), seq_n + len(tok_c)
    pooled = -seq_sum / seq_n if nll == "sequence" else 0.0
    return float(np.mean(losses)) + pooled, float(np.mean(rewards_c)), float(np.mean(rewards_r))


@pytest.mark.parametrize("nll", ["response", "sequence"])
def test_orpo_nll_settings_equal_their_formulas_on_a_tiny_model(qwen_dir, qwen, tmp_path, nll):
    """The default (response) is the paper's formula; sequence is TRL's ORPOTrainer's, whose NLL also scores the
    prompt and pools the tokens of the forward; a filler pair (weight 0) changes neither."""
    from transformers import AutoModelForCausalLM

    assert load_params(None, []).preference.orpo_nll == "response"
    lm = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    pairs = read_pairs(write_jsonl(tmp_path / "p.jsonl", ORPO_RECORDS), qwen, 64)
    lam = 0.3
    want_loss, want_c, want_r = orpo_by_hand(lm, pairs, lam, nll)
    module = PreferenceLoss(lm, "orpo", 0.1, lam, **({} if nll == "response" else {"orpo_nll": nll}))
    batch = collate_pairs([*pairs, pairs[0]], qwen.pad_token_id, weights=[1.0] * len(pairs) + [0.0])
    with torch.no_grad():
        total = module(**batch.model_inputs(torch.device("cpu")))
    stats = summarize(module.tally["train"])
    assert stats["pairs"] == len(pairs)
    assert float(total) / len(pairs) == pytest.approx(want_loss, abs=1e-5)
    assert stats["loss"] == pytest.approx(want_loss, abs=1e-5)
    assert stats["rewards_chosen"] == pytest.approx(want_c, abs=1e-6)
    assert stats["rewards_rejected"] == pytest.approx(want_r, abs=1e-6)
    other = orpo_by_hand(lm, pairs, lam, "sequence" if nll == "response" else "response")[0]
    assert abs(other - want_loss) > 1e-2  # the two settings are different losses on these pairs

    # micro-batches (gradient accumulation, ranks): sequence averages their pooled means, as TRL's Trainer does
    module.tally["train"].clear()
    with torch.no_grad():
        parts = [float(module(**collate_pairs(c, qwen.pad_token_id).model_inputs(torch.device("cpu"))))
                 for c in (pairs[:2], pairs[2:])]  # fmt: skip
    if nll == "response":  # per pair: the split does not matter
        assert sum(parts) / len(pairs) == pytest.approx(want_loss, abs=1e-5)
    else:
        halves = [orpo_by_hand(lm, c, lam, nll)[0] * len(c) for c in (pairs[:2], pairs[2:])]
        assert parts == pytest.approx(halves, abs=1e-5)


def test_sequence_targets_score_the_prompt_after_its_first_token(qwen, tmp_path):
    pairs = read_pairs(write_jsonl(tmp_path / "p.jsonl", ORPO_RECORDS), qwen, 64)
    batch = collate_pairs(pairs, qwen.pad_token_id)
    full = sequence_targets(batch.input_ids, batch.targets)
    for row, pair in enumerate(pairs):
        ids = np.concatenate((pair.prompt, pair.chosen)).tolist()
        assert full[row, : len(ids) - 1].tolist() == ids[1:]  # every token but the first, in order
        assert (full[row, len(ids) - 1 :] == IGNORE_INDEX).all()  # the padding stays unscored
    learned = batch.targets != IGNORE_INDEX
    assert torch.equal(full[learned], batch.targets[learned])  # the completions' targets unchanged


def test_eval_batches_cover_every_pair_once_with_weightless_fillers():
    pairs = [Pair(i, np.array([1, 2]), np.array([3]), np.array([4, 5])) for i in range(5)]
    got = [pair_eval_batches(pairs, Layout(2, 1, 2, rank), 0, None) for rank in (0, 1)]
    assert [len(b) for b in got] == [2, 2]
    assert sum(b.num_targets for bs in got for b in bs) == 5


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "a", "chosen": "b"}, "missing rejected"),
        ({"prompt": "a", "chosen": "b", "rejected": ["x"]}, "three strings or three message lists"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "b"}],
          "rejected": [{"role": "assistant", "content": "c"}]}, "chosen: expected the assistant's message(s) only"),
        ('{"prompt": "a", "chosen"', "not valid JSON"),
    ],
)  # fmt: skip
def test_a_bad_record_is_one_line_naming_file_and_line(qwen, tmp_path, record, message):
    good = {"prompt": "a", "chosen": "b", "rejected": "c"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(DataError) as err:
        read_pairs(path, qwen, 64)
    text = str(err.value)
    assert f"{path}:2" in text and "\n" not in text
    if message != "not valid JSON":
        assert message in text


@pytest.mark.parametrize(
    ("override", "key"),
    [("preference.beta=0", "preference.beta"), ("preference.beta=-1", "preference.beta"),
     ("preference.loss=ipo", "preference.loss"), ("preference.orpo_lambda=0", "preference.orpo_lambda"),
     ("preference.method=qlora", "preference.quantize"), ("preference.orpo_nll=prompt", "preference.orpo_nll")],
)  # fmt: skip
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_params(None, [override])
    assert key in str(err.value) and "\n" not in str(err.value).strip()


def test_bad_orpo_nll_lists_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["preference.orpo_nll=full"])
    assert "preference.orpo_nll" in str(err.value) and "'response', 'sequence'" in str(err.value)
    with pytest.raises(ValueError, match="orpo_nll: 'full'; expected response or sequence"):
        PreferenceLoss(nn.Linear(1, 1), "orpo", 0.1, 0.1, orpo_nll="full")


# -- the reference cache -----------------------------------------------------------------------------------------


def test_reference_cache_round_trip_and_refusals(tmp_path, caplog):
    ref = {"train": {0: (-1.5, -2.5), 3: (-4.0, -0.5)}, "heldout": {1: (-7.0, -8.0)}}
    path = tmp_path / "cache.safetensors"
    write_cache(path, ref, "abc")
    assert read_cache(path, "abc") == ref
    with caplog.at_level(logging.INFO, logger="frontier.finetune"):
        assert read_cache(path, "other") is None  # made from other inputs
        assert "checksum mismatch" in caplog.text
        blob = bytearray(path.read_bytes())
        at = bytes(blob).find(np.float64(-2.5).tobytes())
        blob[at : at + 8] = np.float64(-0.25).tobytes()  # one cached value changed in place, metadata kept
        path.write_bytes(bytes(blob))
        assert read_cache(path, "abc") is None
        assert "does not match its own digest" in caplog.text
        path.write_bytes(b"garbage")
        assert read_cache(path, "abc") is None
        assert "unreadable" in caplog.text
