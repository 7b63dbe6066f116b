"""The README's example commands ("Your own model", "Fine-tuning and preference tuning") run as written.

Each `/models/<name>` becomes a tiny random-init checkpoint of that model's family (tests/model/families.py);
`bash run.sh` is this venv; a short budget rides along as extra `--set`s. The frontier commands run for real
in order (QLoRA fine-tune, merge, DPO on the merged model) in a workspace holding the data they name; the
Snakemake line is the one tests/workflow/test_continued_pretraining.py runs.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.finetune.helpers import sft_pairs
from tests.model.families import build_checkpoint
from tests.workflow.helpers import REPO

SECTIONS = ("## Your own model", "## Fine-tuning and preference tuning")
# The models the README names, as the family a tiny checkpoint stands in for
FAMILY = {"Qwen2.5-0.5B": "qwen2", "Mistral-7B-v0.3": "mistral"}
BUDGET = {
    "finetune": ["finetune.max_steps=2", "finetune.log_every=1", "finetune.eval_every=0", "finetune.max_seq_len=48",
                 "finetune.micro_batch_size=2", "finetune.warmup_steps=0"],
    "preference": ["preference.max_steps=2", "preference.log_every=1", "preference.eval_every=0",
                   "preference.max_seq_len=48", "preference.micro_batch_size=2"],
}  # fmt: skip


def readme_commands() -> list[str]:
    """The command lines of the bash blocks in SECTIONS (continuations joined, comments dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for title in SECTIONS:
        start = text.index(title + "\n")
        end = text.find("\n## ", start + len(title))
        section = text[start : end if end != -1 else len(text)]
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #", 1)[0].strip()
                if line:
                    commands.append(line)
    return commands


def test_the_readme_names_only_models_this_test_stands_in_for() -> None:
    names = {m for c in readme_commands() for m in re.findall(r"/models/([\w.\-]+)", c)}
    assert names and names <= set(FAMILY), names


def test_the_continued_pretraining_line_is_the_one_its_test_runs() -> None:
    from tests.workflow.test_continued_pretraining import _init_from

    (line,) = [c for c in readme_commands() if " snakemake " in f" {c} "]
    argv = shlex.split(line)
    assert argv[:2] == ["bash", "run.sh"] and argv[2:6] == ["snakemake", "--cores", "all", "train"]
    model = argv[argv.index("--config") + 1].split("init_from: ", 1)[1].rstrip("}")
    assert argv[argv.index("--config") :] == _init_from(Path(model))


def _preference_pairs(directory: Path) -> None:
    directory.mkdir(parents=True)
    pairs = [{"prompt": f"def add_{i}(a, b):\n", "chosen": "    return a + b\n", "rejected": "    return a - b\n"}
             for i in range(6)]  # fmt: skip
    for name in ("train.jsonl", "heldout.jsonl"):
        (directory / name).write_text("".join(json.dumps(p) + "\n" for p in pairs))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_fine_tuning_and_preference_commands_run_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    sft = sft_pairs(tmp_path)
    (work / "data" / "sft").symlink_to(sft)
    _preference_pairs(work / "data" / "preference")
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert yaml.safe_load((work / "params.yaml").read_text())  # the project's own parameter file
    models = {name: build_checkpoint(family, tmp_path / "models" / name) for name, family in FAMILY.items()}

    ran = []
    for line in readme_commands():
        argv = shlex.split(line)
        if argv[:3] != ["bash", "run.sh", "frontier"]:
            continue
        argv = [str(models[a.split("/models/", 1)[1]]) if a.startswith("/models/") else a for a in argv[3:]]
        for override in BUDGET.get(argv[0], ()):
            argv += ["--set", override]
        proc = subprocess.run([sys.executable, "-m", "frontier", *argv], cwd=work, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
        ran.append(argv[0])
    assert ran == ["finetune", "merge", "preference"], ran
    assert json.loads((work / "runs" / "finetune" / "run.json").read_text())["method"] == "qlora"
    assert (work / "runs" / "merged" / "config.json").is_file()
    metrics = json.loads((work / "runs" / "preference" / "metrics.json").read_text())
    assert metrics, "the preference stage wrote no metrics"
