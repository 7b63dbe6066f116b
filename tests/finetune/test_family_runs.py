"""Every family end to end, as a user adapts a downloaded model: the README's "Your own model" table, row by row.

For each tiny family checkpoint (tests/model/families.py: the family's config class, sharded safetensors, its
tokenizer and chat template) the test runs the stages' own functions in order:

1. the tokenizer stage copies the model's tokenizer (nothing added) and the tokenize stage encodes real text;
2. the train stage continues the checkpoint (model.init_from) for 20 steps: the loss falls, the log and
   run.json carry the kernels coverage line (tests/model/test_family_kernels.py's, at the same window);
3. the export is the run's last weights, in the family's own format: stock transformers reloads it and gives
   the logits of those weights; cached generation of the reloaded model gives the tokens of the routed model;
4. full, LoRA and QLoRA (4-bit NF4 on bitsandbytes' CPU backend) fine-tunes of the export train (their loss
   falls) and export what stock transformers / peft reload.

The logits / gradient equality of each family's routed model with stock transformers is
tests/model/test_family_kernels.py's; this file proves the rows run through the stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from frontier.config import load_params
from frontier.config.kernels import KernelsConfig
from frontier.data.pack import tokenize
from frontier.data.tokenizer import train_tokenizer
from frontier.finetune.run import finetune
from frontier.model.kernels import route_kernels
from frontier.train.run import train
from tests.finetune.helpers import FT_OVERRIDES
from tests.finetune.test_sft_data import MODULES, prepared_dir
from tests.model.families import FAMILIES, build_checkpoint
from tests.model.test_family_kernels import EXPECTED, SEQ
from tests.train.helpers import TINY, losses, read_rows

STEPS = 20
TRAIN = (
    *TINY,
    f"train.seq_len={SEQ}",  # the window of test_family_kernels' coverage lines (sliding windows bind)
    f"train.max_steps={STEPS}",
    "train.micro_batch_size=4",
    "schedule.warmup_steps=4",
    "optimizer.lr=1e-2",
)
FINETUNE = ("finetune.max_steps=6", "finetune.log_every=1", "finetune.eval_every=0", "finetune.max_seq_len=48",
            "finetune.micro_batch_size=4", "finetune.target_modules=all-linear")  # fmt: skip
METHODS = {"full": ("finetune.method=full", "finetune.lr=3e-3"), "lora": ("finetune.method=lora",),
           "qlora": ("finetune.method=qlora", "finetune.quantize=4bit")}  # fmt: skip
PROMPT = [[5, 6, 7, 8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real standard-library source as the prepare stage writes it (read-only)."""
    return prepared_dir(tmp_path_factory.mktemp("prepared"), MODULES[:4])


def _run_weights(checkpoints: Path) -> dict[str, torch.Tensor]:
    """The model weights of the run's last checkpoint (ZeRO-0: DeepSpeed's whole-module file), names as exported."""
    [last] = sorted(checkpoints.glob("step_*"))[-1:]
    states = torch.load(last / "ds" / "state" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k.removeprefix("lm."): v for k, v in states["module"].items()}


def _generate(model: torch.nn.Module) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor(PROMPT), max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    return out[0].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_continues_exports_and_fine_tunes(family: str, tmp_path: Path, prepared: Path, sft: Path) -> None:
    checkpoint = build_checkpoint(family, tmp_path / "checkpoint")

    # 1. the model's own tokenizer, unchanged, encodes the corpus
    p = load_params(None, [*TRAIN, f"model.init_from={checkpoint}"])
    train_tokenizer(p, prepared, tmp_path / "tokenizer")
    own = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tokenizer", local_files_only=True)) == len(own)
    tokenize(p, prepared, tmp_path / "tokenizer", tmp_path / "tokens", workers=1)

    # 2. continued pretraining: 20 steps, the loss falls, what was fused is said
    out = tmp_path / "train"
    metrics = train(p, tmp_path / "tokens", tmp_path / "tokenizer", out, tmp_path / "ckpt")
    assert metrics["steps"] == STEPS
    curve = losses(out)
    assert sum(curve[-3:]) / 3 < curve[0], curve
    run = json.loads((out / "run.json").read_text())
    assert run["kernels"]["line"] == EXPECTED[family]

    # 3. the export: the run's weights in the family's format, reloaded by stock transformers
    model_dir = out / "model"
    assert (
        json.loads((model_dir / "config.json").read_text())["architectures"]
        == (json.loads((checkpoint / "config.json").read_text())["architectures"])
    )
    stock = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    trained = _run_weights(tmp_path / "ckpt")
    reloaded = stock.state_dict()
    for name, value in trained.items():
        assert torch.equal(reloaded[name], value), name
    routed = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    route_kernels(routed, KernelsConfig())  # auto, as the run had it
    assert _generate(routed) == _generate(stock)

    # 4. the three fine-tune methods on the export
    for method, overrides in METHODS.items():
        ft_out = tmp_path / method
        ft = load_params(None, [*FT_OVERRIDES, *FINETUNE, *overrides])
        result = finetune(ft, model_dir, sft, ft_out, tmp_path / f"{method}_ckpt")
        rows = read_rows(ft_out / "plots" / "train.csv")
        assert result["steps"] == 6 and rows[-1]["loss"] < rows[0]["loss"], (method, rows)
        if method == "full":
            tuned = AutoModelForCausalLM.from_pretrained(ft_out / "model", local_files_only=True)
            assert result["trainable_params"] == result["total_params"]
            changed = [n for n, v in tuned.state_dict().items() if not torch.equal(v, reloaded[n])]
            assert changed, "full fine-tune exported the base unchanged"
        else:
            base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
            adapted = PeftModel.from_pretrained(base, ft_out / "adapter")
            assert 0 < result["trainable_params"] < result["total_params"]
            assert sorted(adapted.peft_config["default"].target_modules) == sorted(
                json.loads((ft_out / "adapter" / "adapter_config.json").read_text())["target_modules"]
            )


def test_the_readme_table_is_the_tested_rows() -> None:
    """README "Your own model": one row per tested family, its kernels column the coverage line the run gives."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- families:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split(" ", 1)[0]] = cells[1:]
    assert list(rows) == list(FAMILIES)
    for family, cells in rows.items():
        assert cells == [EXPECTED[family], *["yes"] * 5], family
