"""configs/shakespeare_char.yaml stays valid and stays nanoGPT's shakespeare_char CPU run."""

from __future__ import annotations

import importlib.util
import json

from frontier.config import load_params
from tests.train.helpers import REPO


def test_params_are_nanogpts_cpu_run():
    p = load_params(REPO / "configs" / "shakespeare_char.yaml")
    m, t, o, s = p.model, p.train, p.optimizer, p.schedule
    assert (m.arch, m.num_layers, m.num_heads, m.hidden_size, m.max_seq_len, m.dropout) == ("gpt2", 4, 4, 128, 64, 0.0)
    assert (t.micro_batch_size * t.grad_accum_steps, t.seq_len, t.max_steps, p.engine.grad_clip) == (12, 64, 2000, 1.0)
    assert (o.lr, o.beta1, o.beta2, o.weight_decay) == (1e-3, 0.9, 0.99, 0.1)
    assert (s.kind, s.warmup_steps, s.min_lr_ratio) == ("cosine", 100, 0.1)
    assert p.tokenizer.kind == "char" and not p.tokenize.append_eos and not p.tokenize.prepend_bos


def test_bench_splits_like_nanogpt(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_shakespeare", REPO / "bench" / "shakespeare_char.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = "".join(chr(65 + i % 26) for i in range(1001)) + "é\n"
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    split = bench.nanogpt_split(tmp_path / "in.txt", tmp_path / "prepared")
    cut = int(len(text) * 0.9)
    train = json.loads((tmp_path / "prepared" / "train.jsonl").read_text(encoding="utf-8"))["text"]
    val = json.loads((tmp_path / "prepared" / "val.jsonl").read_text(encoding="utf-8"))["text"]
    assert (train, val) == (text[:cut], text[cut:])  # by characters, the first 90% then the rest
    assert split == {"chars": len(text), "train_chars": cut, "val_chars": len(text) - cut}
