"""lm-evaluation-harness through the evaluate stage's model: the same numbers as the lm_eval command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frontier.config.evaluate import HarnessConfig
from frontier.errors import ConfigError
from frontier.eval.harness import EXAMPLE_TASK, run_harness, task_metrics, write_example_task
from frontier.eval.model_io import load_model
from tests.eval.tiny import save_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("harness") / "model", context=128)


def _user_task(directory: Path) -> Path:
    """A task YAML as a user writes one: local JSONL data, two fixed choices."""
    directory.mkdir()
    data = directory / "yesno.jsonl"
    rows = [{"q": f"{i} + {i} == {2 * i}", "label": 0} for i in range(6)]
    rows += [{"q": f"{i} + 1 == {i}", "label": 1} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "yesno.yaml").write_text(
        f"task: my_yesno\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['True', 'False']\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    return directory


_RANK_VARIABLES = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "ROLE_RANK",
    "ACCELERATE_USE_CPU",
}


def _cli_results(model_dir: Path, include: Path, out: Path, tasks: list[str]) -> dict:
    """lm_eval's own command line on the saved model (its own load, in its own process)."""
    argv = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
            f"pretrained={model_dir},dtype=float32", "--tasks", ",".join(tasks), "--include_path", str(include),
            "--device", "cpu", "--batch_size", "8", "--output_path", str(out)]  # fmt: skip
    # a plain process: no rank variables an earlier in-process run left behind (accelerate would start ranks)
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARIABLES}
    env |= {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = out.rglob("results_*.json")
    return json.loads(result.read_text())["results"]


@pytest.mark.slow
def test_the_example_and_a_users_task_score_the_same_as_the_lm_eval_command_line(model_dir, tmp_path):
    mine = _user_task(tmp_path / "mine")
    model, tokenizer = load_model(model_dir)
    cfg = HarnessConfig(tasks=[EXAMPLE_TASK, "my_yesno"], include=[str(mine)])
    ours = run_harness(model, tokenizer, cfg, tmp_path / "tasks")
    # the command line reads both YAMLs from one directory: the example as the stage wrote it, the user's
    both = tmp_path / "both"
    both.mkdir()
    for yaml in (tmp_path / "tasks" / "python_syntax.yaml", mine / "yesno.yaml"):
        shutil.copy(yaml, both / yaml.name)
    theirs = task_metrics(_cli_results(model_dir, both, tmp_path / "cli", [EXAMPLE_TASK, "my_yesno"]))
    assert set(ours) == {EXAMPLE_TASK, "my_yesno"}
    assert ours[EXAMPLE_TASK]["samples"] == 60 and ours["my_yesno"]["samples"] == 12
    for task, keys in ((EXAMPLE_TASK, ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")), ("my_yesno", ("acc",))):
        for key in keys:
            assert ours[task][key] == pytest.approx(theirs[task][key], abs=1e-9), (task, key)
    assert 0.0 <= ours[EXAMPLE_TASK]["acc"] <= 1.0 and ours[EXAMPLE_TASK]["acc_stderr"] > 0


def test_limit_caps_the_documents_per_task(model_dir, tmp_path):
    mine = _user_task(tmp_path / "mine")
    model, tokenizer = load_model(model_dir)
    cfg = HarnessConfig(tasks=["my_yesno", EXAMPLE_TASK], include=[str(mine)], limit=5)
    ours = run_harness(model, tokenizer, cfg, tmp_path / "tasks")
    assert ours["my_yesno"]["samples"] == 5 and ours[EXAMPLE_TASK]["samples"] == 5


def test_no_tasks_runs_nothing(model_dir, tmp_path):
    model, tokenizer = load_model(model_dir)
    assert run_harness(model, tokenizer, HarnessConfig(tasks=[]), tmp_path / "tasks") == {}
    assert not (tmp_path / "tasks").exists()


def test_an_unknown_task_or_one_whose_data_are_not_on_disk_is_one_line(model_dir, tmp_path, monkeypatch):
    # (one test: each builds lm-eval's whole registry index, ~20 s)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    model, tokenizer = load_model(model_dir)
    cfg = HarnessConfig(tasks=[EXAMPLE_TASK, "frontier_python_syntx"])
    with pytest.raises(ConfigError, match=r"evaluate\.harness\.tasks: 'frontier_python_syntx'.*did you mean "
                                          r"frontier_python_syntax"):  # fmt: skip
        run_harness(model, tokenizer, cfg, tmp_path / "tasks")
    # a registry task: refused, not downloaded (this machine has no hub access; the error says what to do)
    with pytest.raises(ConfigError, match=r"evaluate\.harness\.tasks: .*not on disk.*dataset_path: json"):
        run_harness(model, tokenizer, HarnessConfig(tasks=["arc_easy"], limit=2), tmp_path / "tasks")


def test_an_include_that_is_not_a_directory_is_named(model_dir, tmp_path):
    model, tokenizer = load_model(model_dir)
    cfg = HarnessConfig(tasks=[EXAMPLE_TASK], include=[str(tmp_path / "nowhere")])
    with pytest.raises(ConfigError, match=r"evaluate\.harness\.include: .*nowhere: not a directory"):
        run_harness(model, tokenizer, cfg, tmp_path / "tasks")


def test_the_example_yaml_names_its_data_by_absolute_path(tmp_path):
    text = write_example_task(tmp_path).read_text()
    (line,) = [x for x in text.splitlines() if x.strip().startswith("test: ")]
    path = Path(line.split("test: ", 1)[1])
    assert path.is_absolute() and path.is_file()
    assert sum(1 for _ in path.open()) == 60


def test_task_metrics_names():
    raw = {
        "t": {
            "alias": "t",
            "acc,none": 0.5,
            "acc_stderr,none": "N/A",
            "exact_match,strict-match": 1,
            "f1,none": float("nan"),
        }
    }
    assert task_metrics(raw) == {"t": {"acc": 0.5, "acc_stderr": None, "exact_match_strict-match": 1.0, "f1": None}}
