"""LoRA fine-tuning through the training engine, the masked dataset and merging (QLoRA, full: test_qlora, test_full)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from frontier.config import load_params
from frontier.errors import ConfigError
from frontier.finetune.dataset import ExampleSampler, encode, eval_batches, read_records
from frontier.finetune.merge import merge
from frontier.finetune.run import finetune
from frontier.finetune.sft_data import build_sft_pairs
from frontier.model.loss import IGNORE_INDEX
from frontier.train.batches.data import Layout
from frontier.utils.metrics_files import read_metrics
from tests.eval.tiny import corpus_texts, make_tokenizer, trained_run
from tests.finetune.helpers import FT_OVERRIDES, heldout_loss
from tests.finetune.ranks import assert_same_losses, finetune_stage
from tests.finetune.test_sft_data import MODULES, prepared_dir


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The tiny pre-trained model fine-tuned once on docstring -> body pairs from real stdlib code."""
    root = tmp_path_factory.mktemp("finetune")
    params = load_params(None, list(FT_OVERRIDES))
    build_sft_pairs(params, prepared_dir(root / "prepared", MODULES), root / "sft")
    base = trained_run()["out"] / "model"
    metrics = finetune(params, base, root / "sft", root / "out", root / "ckpt")
    return {"root": root, "params": params, "base": base, "metrics": metrics}


def test_finetuning_lowers_the_heldout_loss(tuned):
    m = tuned["metrics"]
    assert m["finetuned_heldout_loss"] < m["base_heldout_loss"]
    assert m["steps"] == 40 and m["heldout_pairs"] > 0
    assert 0 < m["trainable_params"] < m["total_params"] / 2
    out = tuned["root"] / "out"
    assert read_metrics(out) == m
    numbers = json.loads((out / "metrics.json").read_text())
    assert "train_time_s" not in numbers and "base_model" not in numbers  # speed.json and run.json hold those
    assert json.loads((out / "run.json").read_text())["lora"]["r"] == m["lora"]["r"]


def test_base_loss_is_the_base_models_own_loss_on_response_tokens(tuned):
    """Recompute the base model's held-out loss with transformers alone (labels masked on prompts)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tuned["base"])
    model = AutoModelForCausalLM.from_pretrained(tuned["base"]).eval()
    loss = heldout_loss(model, tokenizer, tuned["root"] / "sft" / "heldout.jsonl")
    assert tuned["metrics"]["base_heldout_loss"] == pytest.approx(loss, rel=1e-4)


def test_outputs_reuse_the_training_monitoring_and_checkpoints(tuned):
    out, ckpt = tuned["root"] / "out", tuned["root"] / "ckpt"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "tokenizer.json").is_file()
    val = (out / "plots" / "val.csv").read_text().splitlines()
    assert val[0] == "step,val_loss" and [r.split(",")[0] for r in val[1:]] == ["10", "20", "30", "40"]
    assert float(val[-1].split(",")[1]) == pytest.approx(tuned["metrics"]["finetuned_heldout_loss"], rel=1e-6)
    assert (out / "plots" / "train.csv").read_text().startswith("step,loss,lr,grad_norm,tokens_per_s")
    assert any((out / "tb").iterdir())
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step_"))[-1] == "step_00000040"


def test_rerun_resumes_from_the_checkpoint(tuned):
    """Same command again: the run resumes at step 40 (nothing left to train) and reports the same loss."""
    root = tuned["root"]
    again = finetune(tuned["params"], tuned["base"], root / "sft", root / "out_again", root / "ckpt")
    assert again["steps"] == 40
    assert again["finetuned_heldout_loss"] == pytest.approx(tuned["metrics"]["finetuned_heldout_loss"], rel=1e-6)


def test_merged_model_matches_the_adapter_and_loads_without_frontier(tuned, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tuned["root"] / "out"
    merged_dir = merge(adapter, tmp_path / "merged")
    ids = torch.tensor([[5, 17, 42, 8, 99, 3, 64]])
    base = AutoModelForCausalLM.from_pretrained(tuned["base"]).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        peft_logits = PeftModel.from_pretrained(base, str(adapter / "adapter")).eval()(input_ids=ids).logits
    np.save(tmp_path / "ids.npy", ids.numpy())
    np.save(tmp_path / "expected.npy", peft_logits.numpy())
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)  # the adapter changed the model
    script = (
        "import sys, numpy as np, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"d = {str(merged_dir)!r}\n"
        "m = AutoModelForCausalLM.from_pretrained(d).eval(); AutoTokenizer.from_pretrained(d)\n"
        f"ids = torch.from_numpy(np.load({str(tmp_path / 'ids.npy')!r}))\n"
        f"want = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "got = m(input_ids=ids).logits.detach().numpy()\n"
        "assert 'frontier' not in sys.modules and 'peft' not in sys.modules\n"
        "print(float(np.abs(got - want).max()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-4


def test_unknown_target_modules_are_named(tuned, tmp_path):
    params = load_params(None, [*FT_OVERRIDES, "finetune.target_modules=[q_proj,c_attn]"])
    with pytest.raises(ConfigError, match=r"\['c_attn'\] match no linear layer.*q_proj"):
        finetune(params, tuned["base"], tuned["root"] / "sft", tmp_path / "out", tmp_path / "ckpt")


def test_prompt_tokens_are_masked_and_response_tokens_kept():
    tokenizer = make_tokenizer(corpus_texts(10), vocab_size=300)
    prompt, response = "def f(x):\n    '''Double.'''\n", "    return 2 * x\n"
    ex = encode(tokenizer, prompt, response, max_len=64)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert ex.input_ids.tolist() == p + r
    assert ex.targets.tolist() == [IGNORE_INDEX] * (len(p) - 1) + r + [tokenizer.eos_token_id]
    cut = encode(tokenizer, prompt, response, max_len=len(p) + 1)
    assert cut.targets.tolist() == [IGNORE_INDEX] * (len(p) - 1) + r[:2]
    assert encode(tokenizer, prompt, response, max_len=len(p) - 1) is None


def test_chat_records_use_the_last_assistant_message(tmp_path):
    tokenizer = make_tokenizer(corpus_texts(10), vocab_size=300)
    path = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]
    path.write_text(json.dumps({"messages": msgs}) + "\n" + json.dumps({"prompt": "a", "response": "b"}) + "\n")
    (prompt, response), plain = read_records(path, tokenizer)
    assert response == "hi" and "Say hi" in prompt and prompt.endswith("### Assistant:\n")
    assert plain == ("a", "b")
    path.write_text(json.dumps({"messages": msgs[:1]}) + "\n")
    with pytest.raises(Exception, match="last message must be the assistant"):
        read_records(path, tokenizer)


def test_batches_are_a_function_of_seed_and_index_and_eval_covers_everything_once():
    tokenizer = make_tokenizer(corpus_texts(10), vocab_size=300)
    examples = [encode(tokenizer, f"# {i}\n", "x = 1\n" * (i % 3 + 1), 64) for i in range(10)]
    a, b = ExampleSampler(examples, 7, 2), ExampleSampler(examples, 7, 2)
    first = a.batch(range(0, 10))
    assert torch.equal(first.input_ids, b.batch(range(0, 10)).input_ids)
    assert first.num_targets == sum(int((e.targets != IGNORE_INDEX).sum()) for e in examples)  # a permutation
    batches = [eval_batches(examples, Layout(3, 1, 4, rank), 2) for rank in range(4)]
    assert len({len(b) for b in batches}) == 1  # every rank runs the same number of batches
    assert sum(b.num_targets for rank in batches for b in rank) == first.num_targets


def test_a_moved_runs_folder_still_merges_and_holds_no_absolute_path(tuned, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tuned["base"], runs / "train" / "model")
    finetune(tuned["params"], runs / "train" / "model", tuned["root"] / "sft", runs / "finetune", tmp_path / "ckpt")
    for path in (runs / "finetune").rglob("*"):
        if path.suffix in (".json", ".yaml", ".csv", ".jsonl") and path.name != "provenance.json":
            assert str(tmp_path) not in path.read_text(), f"{path} holds an absolute path"
    moved = tmp_path / "elsewhere" / "runs"
    moved.parent.mkdir()
    runs.rename(moved)
    merged = merge(moved / "finetune", tmp_path / "merged")
    assert (merged / "model.safetensors").is_file()


@pytest.mark.slow
def test_finetune_stage_starts_two_ranks_that_match_one(tuned, tmp_path):
    """`frontier finetune` with launch.nproc_per_node=2 starts both ranks itself; at the same global batch
    (2 ranks x micro 4 = 1 rank x micro 8) its per-step losses are one rank's."""
    short = [*FT_OVERRIDES, "finetune.max_steps=6", "finetune.log_every=1", "finetune.eval_every=0"]
    sft, base = tuned["root"] / "sft", tuned["base"]
    finetune(load_params(None, short), base, sft, tmp_path / "one", tmp_path / "ckpt_one")
    two = load_params(None, [*short, "finetune.micro_batch_size=4", "launch.nproc_per_node=2"])
    stderr = finetune_stage(two, base, sft, tmp_path, threads=2)
    assert "finetune: starting 2 rank(s) on this node" in stderr
    assert_same_losses(tmp_path / "one", tmp_path / "two")


def test_finetune_takes_compile_from_the_engine_section(tuned, tmp_path):
    """engine.compile reaches the fine-tune (LoRA layers, adapter dropout, the base's eval with the adapter off):
    the same losses as eager within fp32 rounding, and the same adapter names."""
    from safetensors.torch import load_file

    from tests.train.helpers import losses

    short = [*FT_OVERRIDES, "finetune.max_steps=3", "finetune.log_every=1", "finetune.eval_every=0",
             "finetune.dropout=0.1"]  # fmt: skip
    metrics = {}
    for on in ("false", "true"):
        torch._dynamo.reset()
        p = load_params(None, [*short, f"engine.compile={on}"])
        metrics[on] = finetune(p, tuned["base"], tuned["root"] / "sft", tmp_path / f"out{on}", tmp_path / f"ckpt{on}")
    # fp32: a compiled graph rounds differently in the last bits (~1e-7 relative measured in pre-training)
    torch.testing.assert_close(losses(tmp_path / "outtrue"), losses(tmp_path / "outfalse"), rtol=1e-5, atol=0)
    for key in ("base_heldout_loss", "finetuned_heldout_loss"):
        assert metrics["true"][key] == pytest.approx(metrics["false"][key], rel=1e-5)
    adapters = [
        load_file(str(tmp_path / f"out{on}" / "adapter" / "adapter_model.safetensors")) for on in ("false", "true")
    ]
    assert list(adapters[1]) == list(adapters[0]) and adapters[0]


def test_micro_batch_auto_works_for_finetune_through_the_train_stages_rule(tuned, tmp_path, monkeypatch):
    """finetune.micro_batch_size: auto goes through the same rule as train's (frontier.train.batches.batch_size,
    called by the wiring): on a budget with room for 2 samples the global batch of 8 is 2 x 4, the run is the
    fixed split's (the same samples per step, summed in another order), and the choice is recorded."""
    import frontier.train.batches.batch_size as bs
    from tests.train.helpers import losses

    short = [*FT_OVERRIDES, "finetune.max_steps=3", "finetune.log_every=1", "finetune.eval_every=0"]
    sft, base = tuned["root"] / "sft", tuned["base"]
    fixed = finetune(load_params(None, short), base, sft, tmp_path / "fixed", tmp_path / "ckpt_fixed")
    within = bs.largest_within
    monkeypatch.setattr(
        bs, "largest_within", lambda estimate, budget, options: within(estimate, estimate.at(2), options)
    )
    auto = [*short, "finetune.micro_batch_size=auto", "finetune.global_batch_size=8"]
    chosen = finetune(load_params(None, auto), base, sft, tmp_path / "auto", tmp_path / "ckpt_auto")
    assert fixed["batch"] == {"micro_batch_size": 8, "grad_accum_steps": 1, "chosen_by": "params"}
    assert chosen["batch"] == {"micro_batch_size": 2, "grad_accum_steps": 4, "chosen_by": "cpu budget"}
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["batch"] == chosen["batch"]
    assert json.loads((tmp_path / "ckpt_auto" / "logs" / bs.RECORD).read_text())["micro_batch_size"] == 2
    torch.testing.assert_close(losses(tmp_path / "auto"), losses(tmp_path / "fixed"), rtol=1e-5, atol=0)
    assert chosen["base_heldout_loss"] == pytest.approx(fixed["base_heldout_loss"], rel=1e-6)

    monkeypatch.undo()
    monkeypatch.setattr(bs, "cpu_budget", lambda ranks: 0)  # no room at all: the message names finetune's keys
    with pytest.raises(ConfigError, match=r"finetune\.micro_batch_size: auto: a micro-batch of 1 needs about"):
        finetune(load_params(None, auto), base, sft, tmp_path / "none", tmp_path / "ckpt_none")
