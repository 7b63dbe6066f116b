"""Each stage declares exactly the params sections it reads (what DVC tracks and Snakemake fingerprints).

The whole pipeline runs in-process on a tiny config while every read of a top-level params field is
recorded; whole-config dumps (params.resolved.yaml, the report's config listing) are not reads of a
dependency and are paused. A stage reading an undeclared section would not rerun when it changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

import frontier.config
from frontier.config import Params, load_params
from frontier.pipeline import STAGES

pytestmark = pytest.mark.slow

TINY = [
    "prepare.max_docs=120", "tokenizer.vocab_size=384", "model.hidden_size=32", "model.num_layers=2",
    "model.num_heads=2", "model.max_seq_len=64", "train.max_steps=6", "train.micro_batch_size=4", "train.eval_every=3",
    "train.eval_batches=2", "train.log_every=2", "schedule.warmup_steps=2", "evaluate.max_tokens=4096",
    "evaluate.batch_size=4", "finetune.max_steps=3", "finetune.micro_batch_size=2", "train.monitor.system_every_s=0",
]  # fmt: skip
FIELDS = {f.name for f in dataclasses.fields(Params)}


@contextlib.contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    reads: set[str] = set()
    paused = [0]

    def getattribute(self: Params, name: str) -> object:
        if not paused[0] and name in FIELDS:
            reads.add(name)
        return object.__getattribute__(self, name)

    original = frontier.config.to_dict

    def to_dict(obj: object) -> dict:
        paused[0] += 1
        try:
            return original(obj)
        finally:
            paused[0] -= 1

    with monkeypatch.context() as m:
        m.setattr(Params, "__getattribute__", getattribute)
        m.setattr(frontier.config, "to_dict", to_dict)
        yield reads


def test_every_stage_declares_the_sections_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from frontier.data.pack import tokenize
    from frontier.data.prepare import prepare
    from frontier.data.tokenizer import train_tokenizer
    from frontier.eval.evaluate import evaluate
    from frontier.finetune.lora import finetune, merge
    from frontier.finetune.sft_data import build_sft_pairs
    from frontier.report.build import build_report
    from frontier.train.run import train

    p = load_params(None, TINY)
    d = tmp_path
    runs = {
        "prepare": lambda: prepare(p, d / "prepared"),
        "tokenizer": lambda: train_tokenizer(p, d / "prepared", d / "tokenizer"),
        "tokenize": lambda: tokenize(p, d / "prepared", d / "tokenizer", d / "tokens", workers=1),
        "train": lambda: train(p, d / "tokens", d / "tokenizer", d / "train", d / "ckpt"),
        "evaluate": lambda: evaluate(p, d / "train" / "model", d / "tokens", d / "eval", d / "prepared"),
        "sft_data": lambda: build_sft_pairs(p, d / "prepared", d / "sft"),
        "finetune": lambda: finetune(p, d / "train" / "model", d / "sft", d / "finetune", d / "ckpt_ft"),
        "merge": lambda: merge(d / "finetune", d / "merged"),
        "evaluate_finetuned": lambda: evaluate(p, d / "merged", d / "tokens", d / "eval_ft", d / "prepared"),
        "report": lambda: build_report(p, d / "train", d / "eval", d / "report", d / "finetune", d / "eval_ft"),
    }
    assert set(runs) == set(STAGES), "every stage of the pipeline is exercised"
    for name, run in runs.items():
        with recording(monkeypatch) as reads:
            run()
        declared = set(STAGES[name].params)
        assert reads <= declared, f"{name} reads {sorted(reads - declared)} without declaring them"
        assert declared <= reads, f"{name} declares {sorted(declared - reads)} but never reads them"
