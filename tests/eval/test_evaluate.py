"""The evaluate stage against independent computations (transformers' own loss, a Counter unigram)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from frontier.config import load_params
from frontier.errors import CheckpointError, DataError
from frontier.eval.evaluate import evaluate
from frontier.eval.loss import windows
from frontier.utils.metrics_files import read_metrics
from tests.eval.tiny import corpus_texts, encode_docs, save_model_dir, write_tokens

CONTEXT = 48
UNICODE_DOC = "# ünïcödé — résumé naïve café 🚀\ndef café():\n    return 'déjà vu'\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    texts = corpus_texts(36)
    train, val = texts[:30], texts[30:] + [UNICODE_DOC]
    model_dir = save_model_dir(root / "model", texts + [UNICODE_DOC], context=CONTEXT)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens_dir = write_tokens(root / "tokens", tokenizer, train, val)
    prepared = root / "prepared"
    prepared.mkdir()
    with open(prepared / "val.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(val):
            f.write(json.dumps({"text": text, "source": "a" if i % 2 else "b", "id": str(i)}) + "\n")
    return {"root": root, "model": model_dir, "tokens": tokens_dir, "prepared": prepared, "train": train, "val": val}


def _params(*overrides: str):
    # the held-out figures and samples alone (tests/eval/test_evaluate_scores.py scores the harness and pass@k)
    scores_off = ["evaluate.passk.in_evaluate=false", "evaluate.harness.tasks=[]"]
    return load_params(None, ["evaluate.batch_size=3", "evaluate.sampling.max_new_tokens=6", *scores_off, *overrides])


def _hf_nats(model_dir: Path, stream: list[int], seq_len: int) -> float:
    """Sum of token NLLs through transformers' own shifted loss, one window at a time."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, seq_len):
            window = torch.tensor([stream[start : start + seq_len + 1]])
            if window.shape[1] < 2:
                break
            total += float(model(input_ids=window, labels=window).loss) * (window.shape[1] - 1)
    return total


def _unigram_nats(train_stream: list[int], targets: list[int], vocab: int) -> float:
    counts = Counter(train_stream)
    denom = len(train_stream) + vocab
    return -sum(math.log((counts[t] + 1) / denom) for t in targets)


def test_windows_predict_every_token_once():
    for n, s in [(2, 1), (10, 3), (11, 5), (100, 7), (7, 50)]:
        covered = [i for start, length in windows(n, s) for i in range(start + 1, start + length)]
        assert covered == list(range(1, n)), (n, s)
        assert all(length <= s + 1 for _, length in windows(n, s))


def test_metrics_match_independent_computation(workspace):
    out = workspace["root"] / "eval_full"
    metrics = evaluate(_params(), workspace["model"], workspace["tokens"], out)
    assert read_metrics(out) == metrics  # numbers in metrics.json, model_dir and bytes_estimated in run.json
    assert "model_dir" not in json.loads((out / "metrics.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    val_stream = [t for doc in encode_docs(tokenizer, workspace["val"]) for t in doc]
    train_stream = [t for doc in encode_docs(tokenizer, workspace["train"]) for t in doc]
    num_bytes = sum(len(t.encode("utf-8")) for t in workspace["val"])
    nats = _hf_nats(workspace["model"], val_stream, CONTEXT)
    uni = _unigram_nats(train_stream, val_stream[1:], len(tokenizer))

    assert metrics["seq_len"] == CONTEXT
    assert metrics["tokens_evaluated"] == len(val_stream) - 1
    assert metrics["val_loss"] == pytest.approx(nats / (len(val_stream) - 1), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-9)
    assert metrics["bits_per_byte"] == pytest.approx(nats / math.log(2) / num_bytes, rel=1e-5)
    assert metrics["unigram_bits_per_byte"] == pytest.approx(uni / math.log(2) / num_bytes, rel=1e-9)
    assert metrics["bpb_vs_unigram"] == pytest.approx(1 - metrics["bits_per_byte"] / metrics["unigram_bits_per_byte"])
    assert metrics["bytes_evaluated"] == num_bytes and metrics["bytes_estimated"] is False
    # an untrained model is worse than counting tokens: the floor is a real floor
    assert metrics["bits_per_byte"] > metrics["unigram_bits_per_byte"]


def test_partial_evaluation_scales_bytes_and_says_so(workspace):
    metrics = evaluate(
        _params("evaluate.max_tokens=100", "evaluate.seq_len=16"),
        workspace["model"],
        workspace["tokens"],
        workspace["root"] / "eval_part",
    )
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    total_tokens = sum(len(d) for d in encode_docs(tokenizer, workspace["val"]))
    num_bytes = sum(len(t.encode("utf-8")) for t in workspace["val"])
    assert metrics["tokens_evaluated"] == 99 and metrics["seq_len"] == 16
    assert metrics["bytes_estimated"] is True
    assert metrics["bytes_evaluated"] == pytest.approx(num_bytes * 100 / total_tokens)


def test_per_source_figures_use_whole_documents_and_exact_bytes(workspace):
    metrics = evaluate(
        _params("evaluate.samples_per_prompt=0"),
        workspace["model"],
        workspace["tokens"],
        workspace["root"] / "eval_src",
        workspace["prepared"],
    )
    per = metrics["per_source"]
    assert sorted(per) == ["a", "b"]
    val = workspace["val"]
    for name, docs in (("a", val[1::2]), ("b", val[0::2])):
        assert per[name]["docs"] == len(docs)
        assert per[name]["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    stream = [t for doc in encode_docs(tokenizer, val[1::2]) for t in doc]
    nats = _hf_nats(workspace["model"], stream, CONTEXT)
    assert per["a"]["loss"] == pytest.approx(nats / (len(stream) - 1), rel=1e-5)


def test_per_source_budget_keeps_whole_documents(workspace):
    metrics = evaluate(
        _params("evaluate.per_source_max_tokens=1", "evaluate.samples_per_prompt=0"),
        workspace["model"],
        workspace["tokens"],
        workspace["root"] / "eval_budget",
        workspace["prepared"],
    )
    for figures in metrics["per_source"].values():
        assert figures["docs"] == 1  # the first document is always taken whole


def test_samples_are_greedy_and_seeded(workspace):
    params = _params("evaluate.samples_per_prompt=2", "evaluate.sampling.temperature=1.0")
    out1, out2 = workspace["root"] / "s1", workspace["root"] / "s2"
    evaluate(params, workspace["model"], workspace["tokens"], out1)
    evaluate(params, workspace["model"], workspace["tokens"], out2)
    first = [json.loads(line) for line in (out1 / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    second = [json.loads(line) for line in (out2 / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert first == second
    assert len(first) == len(params.evaluate.prompts) * 3
    assert [r["mode"] for r in first[:3]] == ["greedy", "sample", "sample"]

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    model = AutoModelForCausalLM.from_pretrained(workspace["model"]).eval()
    prompt = params.evaluate.prompts[0]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    ref = model.generate(
        ids, max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    expected = tokenizer.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    assert first[0]["completion"] == expected


def test_missing_model_directory_is_a_checkpoint_error(workspace, tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        evaluate(_params(), tmp_path / "nope", workspace["tokens"], tmp_path / "out")


def test_tokens_from_a_larger_vocabulary_are_rejected(workspace, tmp_path):
    from frontier.data.tokens import write_split

    tokens = tmp_path / "tokens"
    for split in ("train", "val"):
        write_split(tokens / split, [np.arange(5)], vocab_size=100_000, eos_id=0, num_bytes=10)
    with pytest.raises(DataError, match="vocabulary of 100000"):
        evaluate(_params(), workspace["model"], tokens, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_any_causal_lm_directory_works(workspace, tmp_path):
    """A GPT-2 directory (context from n_positions, learned positions, no GQA) through the same stage."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=40)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    quiet = "evaluate.samples_per_prompt=0"
    # learned positions fail loudly past n_positions: the default windows must fit the context
    assert evaluate(_params(quiet), tmp_path / "gpt2", workspace["tokens"], tmp_path / "o1")["seq_len"] == 40
    metrics = evaluate(_params(quiet, "evaluate.seq_len=39"), tmp_path / "gpt2", workspace["tokens"], tmp_path / "o2")
    val_stream = [t for doc in encode_docs(tokenizer, workspace["val"]) for t in doc]
    expected = _hf_nats(tmp_path / "gpt2", val_stream, 39) / (len(val_stream) - 1)  # windows of 40 = n_positions
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
