"""params.yaml validation: every kind of bad input ends in one ConfigError line naming file, key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frontier.config import Params, dump_resolved, load_params, section_keys, to_dict
from frontier.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: object, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _error(tmp_path: Path, data: object, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_params(_write(tmp_path, data), overrides)
    message = str(info.value)
    assert "\n" not in message, "a ConfigError is one line"
    return message


def test_defaults_and_repo_params_are_valid() -> None:
    assert isinstance(load_params(None), Params)
    params = load_params(REPO / "params.yaml")
    assert params.train.max_steps >= 1


def test_repo_params_file_lists_every_key() -> None:
    """DVC tracks params per key and fails on a key missing from params.yaml: the file must hold them all."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())

    def has(key: str) -> bool:
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [k for name in to_dict(load_params(None)) for k in section_keys(name) if not has(k)]
    assert not missing, f"params.yaml lacks {missing}"


def test_misspelled_key_names_closest(tmp_path: Path) -> None:
    msg = _error(tmp_path, {"train": {"max_stesp": 10}})
    assert "params.yaml" in msg and "train.max_stesp" in msg and "did you mean 'train.max_steps'" in msg


def test_unknown_section_names_closest(tmp_path: Path) -> None:
    msg = _error(tmp_path, {"trian": {}})
    assert "trian" in msg and "did you mean 'train'" in msg


def test_key_in_wrong_section_points_to_right_one(tmp_path: Path) -> None:
    msg = _error(tmp_path, {"train": {"beta2": 0.99}})
    assert "did you mean 'optimizer.beta2'" in msg


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"train": {"max_steps": "ten"}}, "train.max_steps", "expected an integer"),
        ({"train": {"max_steps": 2.5}}, "train.max_steps", "expected an integer"),
        ({"train": {"max_steps": True}}, "train.max_steps", "expected an integer"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr", "expected a number"),
        ({"optimizer": {"lr": -1.0}}, "optimizer.lr", "expected a value > 0"),
        ({"optimizer": {"beta2": 1.0}}, "optimizer.beta2", "expected a value < 1"),
        ({"train": {"zero_stage": 4}}, "train.zero_stage", "expected a value <= 3"),
        ({"train": {"precision": "bff16"}}, "train.precision", "did you mean 'bf16'"),
        ({"model": {"tie_embeddings": "yes"}}, "model.tie_embeddings", "expected true or false"),
        ({"prepare": {"sources": {"name": "x"}}}, "prepare.sources", "expected a list"),
        ({"prepare": {"sources": [{"kind": "files"}]}}, "prepare.sources[0].path", "required"),
        ({"prepare": {"sources": [{"kind": "web"}]}}, "prepare.sources[0].kind", "one of"),
        ({"model": {"hidden_size": 100, "num_heads": 3}}, "model.hidden_size", "not divisible"),
        ({"train": "fast"}, "train", "expected a mapping"),
    ],
)
def test_bad_values_name_key_value_and_expectation(tmp_path: Path, data: dict, key: str, expected: str) -> None:
    msg = _error(tmp_path, data)
    assert f"{key}:" in msg, msg
    assert expected in msg, msg


def test_nan_rejected(tmp_path: Path) -> None:
    assert "finite" in _error(tmp_path, "optimizer:\n  lr: .nan\n")


def test_float_from_yaml_string(tmp_path: Path) -> None:
    # YAML 1.1 reads 3e-4 (no dot) as a string; a float field accepts it.
    params = load_params(_write(tmp_path, "optimizer:\n  lr: 3e-4\n"))
    assert params.optimizer.lr == pytest.approx(3e-4)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    msg = _error(tmp_path, "train: {max_steps: [\n")
    assert "line" in msg and "not valid YAML" in msg
    assert "expected a mapping" in _error(tmp_path, "- 1\n- 2\n")


def test_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, {"train": {"max_steps": 5}})
    params = load_params(
        path,
        [
            "train.max_steps=7",
            "schedule.warmup_steps=3",
            "optimizer.lr=3e-4",
            "prepare.sources=[{name: a, kind: stdlib}]",
        ],
    )
    assert params.train.max_steps == 7
    assert params.optimizer.lr == pytest.approx(3e-4)
    assert params.prepare.sources[0].name == "a"
    with pytest.raises(ConfigError, match=r"--set train.max_stpes: unknown key; did you mean 'train.max_steps'"):
        load_params(path, ["train.max_stpes=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_params(path, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"train.max_steps: got -3"):
        load_params(path, ["train.max_steps=-3"])


def test_dump_resolved_round_trips(tmp_path: Path) -> None:
    params = load_params(None, ["train.max_steps=11", "schedule.warmup_steps=0"])
    path = dump_resolved(params, tmp_path / "out")
    again = load_params(path)
    assert to_dict(again) == to_dict(params)
    only = yaml.safe_load(dump_resolved(params, tmp_path / "o2", sections=["train"]).read_text())
    assert list(only) == ["train"]


def test_cli_reports_one_line_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, {"prepare": {"val_fractoin": 0.1}})
    proc = subprocess.run(
        [sys.executable, "-m", "frontier", "check", "--params", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "prepare.val_fractoin" in lines[0] and "did you mean 'prepare.val_fraction'" in lines[0]
    assert "Traceback" not in proc.stderr
