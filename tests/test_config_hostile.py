"""params.yaml as an attacker or a careless user writes it: each case is one ConfigError line, quickly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frontier.config import Params, load_params, to_dict
from frontier.errors import ConfigError
from frontier.utils.strict_yaml import MAX_ALIASES

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
    assert "duplicate key 'wd'" in _error(tmp_path, "engine:\n  alerts: {wd: 1}\nx: {a: {wd: 1, wd: 2}}\n")


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
    # schedule.warmup_steps is train's: a short fine-tune (its own warmup and length) does not trip it
    load_params(None, ["finetune.max_steps=5", "finetune.warmup_steps=2"])


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


# ---- round two (issue 23): shapes that used to end in a traceback or pass unbounded ------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("train:\n  ? [max_steps]\n  : 3\n", "a list used as a key"),
        ("train: {[a, b]: 1}\n", "a list used as a key"),
        ("train:\n  ? {max_steps: 1}\n  : 3\n", "a mapping used as a key"),
        ("? [train]\n: {max_steps: 3}\n", "a list used as a key"),
        ("train:\n  max_steps: " + "9" * 5000 + "\n", "an integer written with 5000 characters"),
        ("seed: -" + "1" * 4301 + "\n", "an integer written with 4302 characters"),
        ("train:\n  max_steps: 0x" + "f" * 200 + "\n", "an integer written with 202 characters"),
    ],
)  # fmt: skip
def test_keys_that_are_collections_and_giant_integers(tmp_path: Path, text: str, why: str) -> None:
    assert why in _error(tmp_path, text)


def test_giant_integer_in_an_override(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="--set train.max_steps: an integer written with 5000 characters"):
        load_params(tmp_path / "params.yaml", ("train.max_steps=" + "9" * 5000,))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("launch:\n  nproc_per_node: 1000000000\n", "launch.nproc_per_node"),
        ("launch:\n  nnodes: 10000000\n", "launch.nnodes"),
        ("launch:\n  threads_per_rank: 100000\n", "launch.threads_per_rank"),
        ("model:\n  init_std: 1000000.0\n", "model.init_std"),
        ("model:\n  rope_theta: 1.0e+300\n", "model.rope_theta"),
    ],
)
def test_values_past_any_real_run_are_refused(tmp_path: Path, text: str, key: str) -> None:
    msg = _error(tmp_path, text)
    assert f"{key}: got" in msg and "expected a value <=" in msg


@pytest.mark.parametrize("value", ["/tmp/elsewhere", "../outside", "dvclive/../../x", "", "a\\..\\..\\b"])
def test_tracker_directory_stays_in_the_workspace(tmp_path: Path, value: str) -> None:
    msg = _error(tmp_path, f"engine:\n  monitor:\n    dvclive_dir: {value!r}\n")
    assert "engine.monitor.dvclive_dir" in msg and "relative path inside the workspace" in msg


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("a{4294967295}", "not a usable regular expression"),
        ("a{70000}", "repetition count of 70000"),
        ("(a+)+$", "nested quantifiers"),
        ("(x+x+)+y", "nested quantifiers"),
        (r"(\w+\s?)+$", "nested quantifiers"),
        ("(.*a){20}", "nested quantifiers"),
        ("(a|aa)+$", "repeated alternation"),
        ("(a|a)*b", "repeated alternation"),
        ("(", "not a valid regular expression"),
    ],
)
def test_drop_regex_that_could_stall_the_stage(tmp_path: Path, pattern: str, why: str) -> None:
    msg = _error(tmp_path, yaml.safe_dump({"prepare": {"clean": {"drop_regex": [pattern]}}}))
    assert "prepare.clean.drop_regex[0]" in msg and why in msg


@pytest.mark.parametrize(
    "pattern", [r"^\s*lorem ipsum", r"https?://\S+", r"(?:\d{1,3}\.){3}\d{1,3}", "(?>a+)+", "a++b"]
)
def test_ordinary_drop_regex_stays_allowed(tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"prepare": {"clean": {"drop_regex": [pattern]}}}))
    assert load_params(path).prepare.clean.drop_regex == [pattern]


def test_a_refused_pattern_would_really_stall() -> None:
    """The shape the guard refuses is slow for real: (a+)+$ on 26 a's and a '!' takes seconds (2**25 paths)."""
    import re
    import time

    start = time.perf_counter()
    re.search(r"(a+)+$", "a" * 22 + "!")
    slow = time.perf_counter() - start
    start = time.perf_counter()
    re.search(r"a+$", "a" * 22 + "!")
    assert slow > 50 * (time.perf_counter() - start)
