"""A parameter file is data, whoever reads it: Snakemake (params.yaml and --configfile), DVC, every CLI command.

Snakemake reads YAML through YTE, which runs ``?expr`` values and ``__definitions__`` as Python when the
document says ``__use_yte__: true`` — while parsing its command line, under ``-n`` too. Each case plants
such a file and looks for the side effect (a marker file) after every entry point has read it.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frontier.cli import build_parser
from frontier.cli import main as frontier_main
from frontier.config import load_params
from frontier.errors import ConfigError
from frontier.params_files import HEADER, write_resolved
from frontier.pipeline import params_file_for
from tests.workflow.helpers import stage_env, workspace

REPO = Path(__file__).resolve().parents[1]
BASE = (REPO / "params.yaml").read_text()


def _hostile(marker: Path, kind: str) -> str:
    """params.yaml with a payload that touches `marker` if anything evaluates it."""
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    if kind == "expr":  # a ?-expression value
        return "__use_yte__: true\n" + BASE.replace("seed: 1337", f"seed: ?{touch} or 1337", 1)
    if kind == "definitions":  # a block YTE exec()s before anything else
        return f"__use_yte__: true\n__definitions__:\n  - {touch}\n" + BASE
    if kind == "python_tag":  # PyYAML's unsafe loaders construct this by calling the function
        return BASE.replace("seed: 1337", f'seed: !!python/object/apply:eval ["{touch}"]', 1)
    raise ValueError(kind)


KINDS = ["expr", "definitions", "python_tag"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=stage_env(), timeout=300)


def _workspace(tmp_path: Path, params: str) -> Path:
    return workspace(tmp_path / "ws", params)


def test_the_guard_is_armed_in_this_environment() -> None:
    """run.sh arms the guard in the venv: Snakemake loads yte through it in every process."""
    code = "import yte; print(hasattr(yte.process_yaml, '__wrapped__'))"
    assert _run([sys.executable, "-c", code], REPO).stdout.strip() == "True"


@pytest.mark.parametrize("kind", ["expr", "definitions"])
def test_yte_refuses_a_template_and_passes_plain_yaml(tmp_path: Path, kind: str) -> None:
    import yte
    from snakemake_interface_common.exceptions import WorkflowError

    marker = tmp_path / "evaluated"
    stream = io.StringIO(_hostile(marker, kind))
    stream.name = "their-params.yaml"
    with pytest.raises(WorkflowError, match=r"their-params.yaml: a YTE template"):
        yte.process_yaml(stream, require_use_yte=True)
    assert not marker.exists()
    assert yte.process_yaml(io.StringIO(BASE), require_use_yte=True) == yaml.safe_load(BASE)


def test_the_guard_loads_strictly(tmp_path: Path) -> None:
    """What Snakemake loads through the guard gets Frontier's strict loader: a duplicate key (the second would
    silently win) and an alias bomb are refused with the file's name, as params.yaml's are."""
    import yte
    from snakemake_interface_common.exceptions import WorkflowError

    for text, why in [
        ("seed: 1\nseed: 2\n", "duplicate key 'seed'"),
        ("a: &a [1]\nb: [" + "*a, " * 200 + "]\n", "aliases"),
    ]:
        stream = io.StringIO(text)
        stream.name = "theirs.yaml"
        with pytest.raises(WorkflowError, match=f"theirs.yaml: .*{why}"):
            yte.process_yaml(stream, require_use_yte=True)


def test_no_evaluation_even_without_the_switch_key(tmp_path: Path) -> None:
    """A caller asking yte to template unconditionally still evaluates nothing."""
    import yte
    from snakemake_interface_common.exceptions import WorkflowError

    marker = tmp_path / "evaluated"
    with pytest.raises(Exception) as info:
        yte.process_yaml(f"a: ?__import__('pathlib').Path({str(marker)!r}).touch()\n")
    assert isinstance(info.value, WorkflowError) or "refused to evaluate" in str(info.value)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["params.yaml -n", "--configfile -n", "params.yaml run"])
def test_snakemake_never_evaluates_a_params_file(tmp_path: Path, kind: str, how: str) -> None:
    marker = tmp_path / "evaluated"
    text = _hostile(marker, kind)
    root = _workspace(tmp_path, text if how.startswith("params.yaml") else BASE)
    args = [sys.executable, "-m", "snakemake", "--cores", "1"]
    if how.startswith("--configfile"):
        (root / "theirs.yaml").write_text(text)
        args += ["--configfile", "theirs.yaml"]
    args += ["-n"] if how.endswith("-n") else ["prepare"]
    proc = _run(args, root)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not marker.exists(), "the params file ran code"
    said = proc.stdout + proc.stderr  # Snakemake logs errors from parsing its command line to stdout
    assert "Traceback" not in said, said[-3000:]
    named = "theirs.yaml" if how.startswith("--configfile") else "params.yaml"
    assert named in said, said[-3000:]
    assert not (root / "data").exists()  # no job started


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["expr"])  # DVC and the stages read params.yaml with no YTE at all: one kind
def test_dvc_repro_and_exp_run_never_evaluate_a_params_file(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "evaluated"
    root = _workspace(tmp_path, _hostile(marker, kind))
    assert _run(["git", "init", "-q"], root).returncode == 0
    assert _run([sys.executable, "-m", "dvc", "init", "-q"], root).returncode == 0
    assert _run(["git", "add", "-A"], root).returncode == 0
    assert _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "theirs"], root).returncode == 0
    for args in (["repro", "prepare"], ["exp", "run", "prepare"]):
        proc = _run([sys.executable, "-m", "dvc", *args], root)
        assert proc.returncode != 0, (args, proc.stdout[-2000:])
        assert "params.yaml" in proc.stdout + proc.stderr
    assert not marker.exists(), "the params file ran code"
    assert not (root / "data" / "prepared").exists()


def _commands_with_params() -> list[tuple[str, list[str]]]:
    """Every CLI subcommand that reads --params, with placeholder values for its required path flags."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        flags = {a.dest: a for a in p._actions}
        if "params" not in flags:
            continue
        required = [a.option_strings[0] for a in p._actions if a.required]
        out.append((name, [x for flag in required for x in (flag, f"missing-{flag.strip('-')}")]))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_cli_command_refuses_a_templated_params_file(tmp_path: Path, kind: str, capsys, monkeypatch) -> None:
    marker = tmp_path / "evaluated"
    (tmp_path / "theirs.yaml").write_text(_hostile(marker, kind))
    monkeypatch.chdir(tmp_path)
    commands = _commands_with_params()
    assert {"prepare", "tokenizer", "tokenize", "train", "evaluate", "finetune", "passk", "report", "check"} <= {
        name for name, _ in commands
    }
    for name, args in commands:
        assert frontier_main([name, "--params", "theirs.yaml", *args]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "theirs.yaml" in err[0], (name, err)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.yaml"]  # nothing written


# ---- the validated-params file Snakemake hands its jobs ------------------------------------------------


def _config() -> dict:
    data = yaml.safe_load(BASE)
    data["train"]["max_steps"] = 70
    return data


def test_a_planted_resolved_file_is_rewritten(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = Path(params_file_for(_config(), yaml.safe_load(BASE)))
    assert path.parent == Path(".snakemake/frontier-params")
    planted = path.read_text().replace("max_steps: 70", "max_steps: 5")
    path.write_text(planted)  # the same name, other content: trusted by its name before
    assert Path(params_file_for(_config(), yaml.safe_load(BASE))) == path
    assert load_params(path).train.max_steps == 70


def test_a_planted_link_is_replaced_not_followed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = write_resolved(_config())
    path.unlink()
    path.symlink_to(victim)
    assert write_resolved(_config()) == path
    assert victim.read_text() == "keep me" and not path.is_symlink()
    assert load_params(path).train.max_steps == 70


def test_a_linked_resolved_directory_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Path(".snakemake").mkdir()
    Path(".snakemake/frontier-params").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="frontier-params: a symbolic link"):
        write_resolved(_config())
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace("max_steps: 70", "max_steps: 5"),  # a value changed
        lambda t: t.replace(HEADER, ""),  # the header dropped, content intact
        lambda t: t + "\n",  # one byte more
    ],
)
def test_a_job_refuses_a_resolved_file_that_does_not_match_its_name(tmp_path: Path, monkeypatch, edit) -> None:
    """Between Snakemake writing the file and a job reading it, an edit is caught by the reader."""
    monkeypatch.chdir(tmp_path)
    path = write_resolved(_config())
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError, match="does not match the hash in its name"):
        load_params(path)


# ---- a refusal names the layer that supplied the value (params.yaml, a --configfile, --config) -------------


def test_snakemake_names_the_layer_of_a_bad_value(tmp_path: Path) -> None:
    """`snakemake --config 'train={max_stesp: 3}'` is --config's typo, not params.yaml's; a --configfile's
    value is that file's; a rule across values names each layer that supplied one."""
    own = workspace(tmp_path / "own", BASE.replace("val_fraction", "val_fractoin"))
    root = workspace(tmp_path / "ws", BASE)
    (root / "theirs.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": "fast"}}))
    cases = [
        (own, [], "params.yaml: prepare.val_fractoin: unknown key; did you mean 'prepare.val_fraction'?"),
        (root, ["--configfile", "theirs.yaml"], "theirs.yaml: optimizer.lr: got 'fast', expected a number"),
        (root, ["--config", "train={max_stesp: 3}"], "--config train.max_stesp: unknown key; did you mean 'train.max_steps'?"),
        (root, ["--config", "train={max_steps: 4}", "schedule={warmup_steps: 9}"],
         "params.yaml with --config: schedule.warmup_steps: 9 is more than train.max_steps=4"),
    ]  # fmt: skip
    for where, args, said in cases:
        proc = _run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], where)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and f"snakemake: error: {said}" in out, (args, out[-2000:])
