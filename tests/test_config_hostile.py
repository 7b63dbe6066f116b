"""params.yaml as an attacker or a careless user writes it: each case is one ConfigError line, quickly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from frontier.config import MAX_ALIASES, Params, load_params, to_dict
from frontier.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _error(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path, overrides)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_duplicate_key_in_a_section(tmp_path: Path) -> None:
    msg = _error(tmp_path, "train:\n  max_steps: 10\n  log_every: 2\n  max_steps: 20\n")
    assert "line 4" in msg and "duplicate key 'max_steps'" in msg and "first at line 2" in msg


def test_a_second_section_of_the_same_name(tmp_path: Path) -> None:
    msg = _error(tmp_path, "train:\n  max_steps: 10\nseed: 3\ntrain:\n  log_every: 2\n")
    assert "duplicate key 'train'" in msg and "line 4" in msg


def test_duplicate_keys_in_flow_style_and_nested_mappings(tmp_path: Path) -> None:
    assert "duplicate key 'lr'" in _error(tmp_path, "optimizer: {lr: 0.1, lr: 0.2}\n")
    assert "duplicate key 'wd'" in _error(tmp_path, "train:\n  alerts: {wd: 1}\nx: {a: {wd: 1, wd: 2}}\n")


def test_merge_keys_stay_allowed(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("base: &b {max_steps: 40, log_every: 4}\n")  # a top-level anchor is itself an unknown key...
    path.write_text("train: &t\n  max_steps: 40\nfinetune:\n  max_steps: 9\n")
    assert load_params(path).train.max_steps == 40


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_nesting(tmp_path: Path, depth: int) -> None:
    msg = _error(tmp_path, "train: " + "[" * depth + "]" * depth + "\n")
    assert "nested too deeply" in msg or "expected" in msg


def test_alias_bomb_is_refused_before_expanding(tmp_path: Path) -> None:
    big = "x" * 100_000
    text = f"a: &s {big}\nb: [{', '.join(['*s'] * 1000)}]\n"
    assert f"more than {MAX_ALIASES} YAML aliases" in _error(tmp_path, text)


def test_billion_laughs(tmp_path: Path) -> None:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    # the bomb sits in a real list field, where validation would walk 9**9 elements
    lines.append("prepare:\n  clean:\n    drop_regex: *l8")
    assert "values once aliases are expanded" in _error(tmp_path, "\n".join(lines) + "\n")


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    assert "at most" in _error(tmp_path, "# " + "x" * (2 << 20) + "\n")


@pytest.mark.parametrize(
    "text",
    ["optimizer:\n  lr: .inf\n", "optimizer:\n  lr: Infinity\n", "optimizer:\n  lr: -.inf\n", "optimizer:\n  lr: .nan\n",
     "optimizer:\n  lr: 1e308\n", "optimizer:\n  lr: '1e400'\n", "optimizer:\n  weight_decay: .inf\n"],
)  # fmt: skip
def test_non_finite_and_absurd_floats(tmp_path: Path, text: str) -> None:
    msg = _error(tmp_path, text)
    assert "optimizer." in msg and ("finite" in msg or "<=" in msg)


@pytest.mark.parametrize(
    ("text", "key"),
    [("seed: 123456789012345678901234\n", "seed"), ("seed: 4294967296\n", "seed"),
     ("model:\n  hidden_size: 1e9\n", "model.hidden_size"), ("model:\n  num_layers: 100000\n", "model.num_layers"),
     ("train:\n  max_steps: 99999999999999999999999\n", "train.max_steps")],
)  # fmt: skip
def test_out_of_range_integers(tmp_path: Path, text: str, key: str) -> None:
    assert f": {key}: " in _error(tmp_path, text)


def test_warmup_longer_than_training(tmp_path: Path) -> None:
    msg = _error(tmp_path, "train:\n  max_steps: 10\nschedule:\n  warmup_steps: 50\n")
    assert "schedule.warmup_steps" in msg and "train.max_steps=10" in msg
    load_params(None, ["train.max_steps=10", "schedule.warmup_steps=10"])  # equal is fine


def test_overrides_get_the_same_guards(tmp_path: Path) -> None:
    for bad in ("optimizer.lr=.inf", "seed=10000000000000000000000", "train.max_steps=[" * 3000 + "]" * 3000):
        with pytest.raises(ConfigError) as info:
            load_params(None, [bad])
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="aliases"):
        load_params(None, ["train.max_steps=[&a 1, " + ", ".join(["*a"] * 200) + "]"])


def test_code_defaults_are_params_yaml() -> None:
    # One source of truth: deleting a key from params.yaml must not change its value.
    assert to_dict(Params()) == to_dict(load_params(REPO / "params.yaml"))


def test_frontier_check_prints_one_line_for_each(tmp_path: Path) -> None:
    cases = {
        "dup.yaml": "train:\n  max_steps: 1\ntrain:\n  max_steps: 2\n",
        "deep.yaml": "seed: " + "[" * 5000 + "]" * 5000 + "\n",
        "inf.yaml": "optimizer:\n  lr: .inf\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        proc = subprocess.run(
            [sys.executable, "-m", "frontier", "check", "--params", str(tmp_path / name)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and name in proc.stderr, proc.stderr


def test_negative_worker_count_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "frontier", "tokenize", "--data", "d", "--tokenizer", "t", "--out", "o", "--workers", "-3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "--workers" in proc.stderr and "expected a whole number >= 0" in proc.stderr
