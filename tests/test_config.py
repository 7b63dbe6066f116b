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
        ({"engine": {"zero_stage": 4}}, "engine.zero_stage", "expected a value <= 3"),
        ({"engine": {"precision": "bff16"}}, "engine.precision", "did you mean 'bf16'"),
        ({"engine": {"offload_params": True}}, "engine.offload_params", "needs zero_stage 3"),
        ({"finetune": {"micro_batch_size": "auto"}}, "finetune.global_batch_size", "micro_batch_size auto needs"),
        ({"finetune": {"global_batch_size": 8}}, "finetune.global_batch_size", "read only with micro_batch_size auto"),
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


# The engine settings were train:'s (finetune took them from there) until engine: was shared by both stages.
OLD_LAYOUT = [
    ("precision", "bf16"), ("zero_stage", 2), ("offload_optimizer", True), ("offload_params", False),
    ("grad_clip", 0.5), ("activation_checkpointing", True), ("compile", True), ("deepspeed_config", "ds.json"),
    ("nan_guard", {"max_consecutive": 2}), ("alerts", {"grad_norm_max": 5.0}), ("monitor", {"tensorboard": False}),
]  # fmt: skip


@pytest.mark.parametrize("section", ["train", "finetune"])
@pytest.mark.parametrize(("key", "value"), OLD_LAYOUT)
def test_an_engine_key_in_a_stage_section_says_where_it_moved(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    msg = _error(tmp_path, {section: {key: value}})
    assert msg == f"{tmp_path / 'params.yaml'}: {section}.{key}: moved to engine.{key}", msg
    moved = {key: value, **({"zero_stage": 1} if key == "offload_optimizer" else {})}
    assert load_params(_write(tmp_path, {"engine": moved}, "new.yaml"))  # the same value in its new place
    with pytest.raises(ConfigError) as info:  # the same from an override, with the whole key
        leaf = f"{key}.{next(iter(value))}" if isinstance(value, dict) else key
        load_params(None, [f"{section}.{leaf}=1"])
    assert str(info.value) == f"--set {section}.{leaf}: moved to engine.{leaf}"


def test_the_engine_section_is_one_for_both_stages() -> None:
    p = load_params(None, ["engine.precision=bf16", "engine.zero_stage=1", "finetune.micro_batch_size=auto",
                           "finetune.global_batch_size=16"])  # fmt: skip
    assert (p.engine.precision, p.engine.zero_stage) == ("bf16", 1)
    assert (p.finetune.micro_batch_size, p.finetune.global_batch_size) == ("auto", 16)
    assert not hasattr(p.train, "precision") and not hasattr(p.finetune, "precision")


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


# ---- a refusal names the layer that supplied the value ----------------------------------------------------


def test_a_refusal_names_the_layer_that_supplied_the_value(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    assert _error(tmp_path, {"optimizer": {"lr": "fast"}}, ("train.max_steps=7",)).startswith(
        f"{path}: optimizer.lr: got 'fast'"
    )  # the file's own mistake stays the file's, whatever --set adds
    assert _error(tmp_path, {"train": {"max_steps": 5}}, ("optimizer.lr=fast",)) == (
        "--set optimizer.lr: got 'fast', expected a number"
    )
    assert _error(tmp_path, {}, ("prepare.sources=[{kind: web}]",)).startswith("--set prepare.sources[0].kind: got")
    msg = _error(tmp_path, {"prepare": {"val_fraction": 0.1}}, ("prepare.sources=[{kind: files}]",))
    assert msg.startswith("--set prepare.sources[0].path: required"), msg  # a rule inside the one value --set gave
    # A rule across values names every layer that supplied one of them.
    msg = _error(tmp_path, {"train": {"max_steps": 5}}, ("schedule.warmup_steps=9",))
    assert msg.startswith(f"{path} with --set: schedule.warmup_steps: 9 is more than"), msg
    with pytest.raises(ConfigError, match=r"^--set train.max_steps: got 0"):
        load_params(None, ["train.max_steps=0"])


def test_origins_merge_as_snakemake_does_and_track_each_key() -> None:
    """Snakemake's merge (update_config) is what a workflow's config means; Origins must merge the same way."""
    from snakemake.utils import update_config

    from frontier.config.load import Origins

    layers = [
        ("params.yaml", {"train": {"max_steps": 5, "seq_len": 8}, "prepare": {"sources": [{"kind": "web"}]}}),
        ("theirs.yaml", {"train": {"seq_len": "x"}, "model": "scalar", "eval": {"a": 1}}),
        ("--config", {"model": {"dim": 4}, "train": {}, "eval": {}, "optimizer": {"lr": 1}}),
    ]
    expected: dict = {}
    data: dict = {}
    origins = Origins("params.yaml")
    for label, layer in layers:
        update_config(expected, yaml.safe_load(yaml.safe_dump(layer)))
        origins.merge(data, label, layer)
    assert data == expected
    assert origins.of("train.max_steps") == "params.yaml"
    assert origins.of("train.seq_len") == "theirs.yaml"
    assert origins.of("prepare.sources[0].kind") == "params.yaml"
    assert origins.of("model.dim") == "--config"  # theirs.yaml's scalar was replaced
    assert origins.of("model") == "--config"  # a section: whoever supplied what is in it
    assert origins.of("train.missing") == "params.yaml with theirs.yaml"  # missing: the section's layers
    assert origins.of("top level") == "params.yaml with theirs.yaml with --config"
    assert Origins("defaults").of("train.max_steps") == "defaults"
