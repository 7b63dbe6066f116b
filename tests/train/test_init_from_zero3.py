"""Continuing a family checkpoint at scale: 2 CPU ranks under ZeRO-3 load a sharded Qwen2 checkpoint partitioned
as the model is built (frontier.model.load), train, and export the family's own format.

The reference for the training is the same run on one rank at ZeRO-0 (in-process); the reference for the export
is DeepSpeed's own consolidation of the run's final ZeRO-3 checkpoint (zero_to_fp32), and stock transformers,
with no frontier import, reloads the export to the same logits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from frontier.train.run import train
from tests.model.families import build_checkpoint
from tests.train.helpers import BASE, Corpus, launch, log_tail, params, read_rows, tiny_params, wait_all, weights

SIZE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}
IDS = [[5, 6, 7, 8, 9, 10]]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 checkpoint in 3 safetensors shards with an index, as downloaded."""
    return build_checkpoint("qwen2", tmp_path_factory.mktemp("qwen2"), seed=5, size=SIZE)


def _stock_logits(model_dir: Path) -> list[float]:
    """Last-position logits of `model_dir` loaded by transformers alone, in a process without frontier."""
    script = textwrap.dedent(f"""
        import json, sys, torch
        torch.set_num_threads(1)
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, local_files_only=True).eval()
        with torch.no_grad():
            logits = model(torch.tensor({IDS})).logits[0, -1].tolist()
        assert not any(m == "frontier" or m.startswith("frontier.") for m in sys.modules), "frontier was imported"
        print(json.dumps(logits))
    """)  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same_run(one: Path, two: Path) -> None:
    """tests.train.helpers.assert_same_run but for the key biases: softmax ignores a bias added to every key, so
    their gradient is zero but for rounding, which Adam's m / sqrt(v) turns into full-size steps of either sign."""
    for a, b in zip(read_rows(one / "plots" / "train.csv"), read_rows(two / "plots" / "train.csv"), strict=True):
        for key in ("step", "loss", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, a, b)
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for name in (n for n in w1 if not n.endswith("k_proj.bias")):
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_two_ranks_zero3_continue_a_sharded_checkpoint_and_export_it(
    tmp_path: Path, corpus: Corpus, qwen2: Path
) -> None:
    common = (*BASE, f"model.init_from={qwen2}", "train.seq_len=16")
    one = tmp_path / "one"
    train(params(*common, "train.micro_batch_size=4"), corpus.tokens, corpus.tokenizer, one, tmp_path / "ck1")

    ds_json = tmp_path / "ds.json"  # no parameter stays whole under ZeRO-3 (tiny ones would by default)
    ds_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    two = tmp_path / "two"
    layout = ("engine.zero_stage=3", "train.micro_batch_size=2", "train.grad_accum_steps=1",
              f"engine.deepspeed_config={ds_json}")  # fmt: skip
    codes = wait_all(launch(2, tiny_params(*common, *layout), corpus, two, tmp_path / "ck2"))
    assert codes == [0, 0], log_tail(two, 0) + log_tail(two, 1)
    _assert_same_run(one, two)  # loaded right on both ranks (step 1's loss), trained alike

    # the export is the run's weights: DeepSpeed's consolidation of the final (partitioned) checkpoint
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "ck2" / "step_00000003" / "ds"), "state")
    exported = load_file(str(two / "model" / "model.safetensors"))
    assert {f"lm.{k}" for k in exported} == set(consolidated)
    assert all(torch.equal(v, consolidated[f"lm.{k}"]) for k, v in exported.items())

    # in the family's own format: its config and generation config, the tokenizer beside them
    model_dir = two / "model"
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert (
        json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
        == json.loads((qwen2 / "generation_config.json").read_text())["eos_token_id"]
    )
    assert (model_dir / "tokenizer.json").is_file()

    # stock transformers reloads it to the logits of the trained weights
    reference = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)), dtype=torch.float32)
    reference.load_state_dict({k.removeprefix("lm."): v for k, v in consolidated.items()})
    with torch.no_grad():
        expected = reference.eval()(torch.tensor(IDS)).logits[0, -1]
    torch.testing.assert_close(torch.tensor(_stock_logits(model_dir)), expected, rtol=0, atol=0)
