"""One source of truth: dvc.yaml, the Snakemake rules and the CLI agree with frontier/pipeline.py."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frontier.cli import build_parser
from frontier.pipeline import ALL_STAGES, STAGES, Flag, Stage, _index, command, dvc_yaml, render_dvc_yaml
from frontier.provenance import record_stage

REPO = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_generated_from_pipeline() -> None:
    assert (REPO / "dvc.yaml").read_text() == render_dvc_yaml(), "run `frontier dvc-yaml` and commit dvc.yaml"


def test_every_stage_command_parses() -> None:
    parser = build_parser()
    for stage in STAGES.values():
        argv = shlex.split(command(stage))
        assert argv[0] == "frontier"
        ns = parser.parse_args(argv[1:])
        if stage.params:
            assert ns.params == "params.yaml"
        # every output path is passed on the command line
        for out in stage.outs:
            assert out in argv, (stage.name, out)


def test_dvc_stage_deps_are_upstream_outputs() -> None:
    produced = {out for s in STAGES.values() for out in s.outs}
    doc = dvc_yaml()
    for name, entry in doc["stages"].items():
        for dep in entry.get("deps", []):
            assert dep in produced, f"{name} depends on {dep}, which no stage writes"
    for path in doc["metrics"]:
        assert any(path.startswith(out + "/") for out in produced), path


def _snakemake(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )


def test_snakemake_rules_match_stages() -> None:
    proc = _snakemake("--list-rules")
    assert proc.returncode == 0, proc.stderr
    rules = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    assert rules == set(STAGES) | {"all"}


def _dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake -n -p` of the whole pipeline in a fresh directory holding a copy of params.yaml."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return _snakemake("-n", "-p", "--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"),
                      "--configfile", str(tmp_path / "params.yaml"), *args)  # fmt: skip


def test_rules_come_from_one_loop_over_stages() -> None:
    assert sorted(p.name for p in (REPO / "workflow" / "rules").glob("*.smk")) == ["common.smk", "stages.smk"]


def test_config_overrides_reach_every_job(tmp_path: Path) -> None:
    proc = _dry_run(tmp_path, "--cores", "1", "--config", "train={max_steps: 70}")
    assert proc.returncode == 0, proc.stderr
    used = {
        part
        for line in proc.stdout.splitlines()
        for part in line.split()
        if part.startswith(".snakemake/frontier-params/params-")
    }
    (path,) = used  # one resolved params file, the same for every job
    resolved = yaml.safe_load((tmp_path / path).read_text())
    assert resolved["train"]["max_steps"] == 70
    assert resolved["train"]["micro_batch_size"] == yaml.safe_load((REPO / "params.yaml").read_text())["train"][
        "micro_batch_size"]  # fmt: skip
    assert "--params params.yaml" not in proc.stdout  # no job runs the file Snakemake did not validate
    bad = _dry_run(tmp_path, "--cores", "1", "--config", "train={max_stesp: 7}")
    assert bad.returncode != 0 and "train.max_stesp: unknown key" in bad.stderr


def test_snakemake_commands_match_dvc(tmp_path: Path) -> None:
    proc = _dry_run(tmp_path, "--cores", "3")
    assert proc.returncode == 0, proc.stderr
    dvc_cmds = {s["cmd"] for s in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()}
    for cmd in dvc_cmds:
        assert cmd in proc.stdout, f"snakemake does not run `{cmd}`"
    assert "--workers 3" in proc.stdout  # the cores Snakemake gives the rule reach the packer


def test_snakemake_stops_on_bad_params_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text().replace("val_fraction", "val_fractoin"))
    proc = _snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "prepare.val_fractoin: unknown key; did you mean 'prepare.val_fraction'?" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- The declaration is all a stage needs (the CLI side is in tests/test_cli.py) ------------------------------


def _first_per_subcommand() -> list[Stage]:
    """The stages each subcommand is built from (evaluate_finetuned reuses evaluate's)."""
    first: dict[str, Stage] = {}
    for stage in ALL_STAGES.values():
        first.setdefault(stage.subcommand, stage)
    return list(first.values())


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    calls = []
    for path in sorted((REPO / "frontier").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                calls.append((path, node))
    return calls


def test_each_stage_records_the_sections_it_declares() -> None:
    """record_stage is given a stage name (its sections come from the declaration), never a list of sections."""
    recorded = set()
    for path, call in _calls("record_stage"):
        if path.name == "provenance.py":
            continue
        stage = call.args[2] if len(call.args) > 2 else next(k.value for k in call.keywords if k.arg == "stage")
        assert isinstance(stage, ast.Constant) and stage.value in ALL_STAGES, f"{path}: {ast.unparse(call)}"
        recorded.add(stage.value)
    assert recorded == {s.name for s in _first_per_subcommand() if s.params}


def test_record_stage_writes_the_declared_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import frontier.provenance
    from frontier.config import Params

    monkeypatch.setattr(frontier.provenance, "write_provenance", lambda directory, record: None)  # no torch probe
    record_stage(Params(), tmp_path, "train")
    recorded = set(yaml.safe_load((tmp_path / "params.resolved.yaml").read_text()))
    assert recorded == {key.split(".")[0] for key in ALL_STAGES["train"].params}
    assert "launch" in recorded and "prepare" not in recorded  # launch.nnodes: its section; undeclared: left out


def test_entry_functions_take_what_the_subcommand_passes() -> None:
    """entry(params, *required paths, *optional paths[, workers=]), read from the source (nothing imported)."""
    for stage in _first_per_subcommand():
        module, _, name = stage.entry.partition(":")
        spec = importlib.util.find_spec(module)
        assert spec and spec.origin, stage.entry
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        positional = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        passed = int(bool(stage.params)) + len(stage.cli_flags)
        without_default = len(positional) - len(fn.args.defaults)
        assert without_default <= passed <= len(positional), (stage.name, positional)
        optional = [f for f in stage.cli_flags if not f.required]
        assert passed - len(optional) >= without_default, f"{stage.name}: an optional flag fills a required argument"
        assert ("workers" in positional + [a.arg for a in fn.args.kwonlyargs]) == stage.parallel, stage.name


def test_deps_and_outs_are_paths_the_command_passes() -> None:
    for stage in STAGES.values():
        passed = [f.path for f in stage.flags if f.path]
        for out in stage.outs:
            assert out in passed, (stage.name, out)
        for dep in stage.deps:
            assert any(p == dep or p.startswith(dep + "/") for p in passed), (stage.name, dep)


def test_passk_is_a_subcommand_outside_the_pipeline() -> None:
    assert "passk" in ALL_STAGES and "passk" not in STAGES
    assert "passk" not in dvc_yaml()["stages"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [
                Stage("a", "m:f", "one", (Flag("out", "o", "x"),)),
                Stage("b", "m:f", "two", (Flag("out", "o", "y"),), cli="a"),
            ],
            "share `frontier a`",
        ),
        ([Stage("a", "m:f", "h", (Flag("out", "o", "x"),), params=("seed",), launches=True)], "launch: params"),
        ([Stage("a", "m:f", "h", (Flag("out", "o"),))], "no path to required --out"),
        ([Stage("a", "m:f", "h"), Stage("a", "m:g", "h")], "two stages are named 'a'"),
    ],
)
def test_a_declaration_that_would_disagree_somewhere_fails_at_import(stages: list[Stage], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _index(stages)


def test_the_pipeline_imports_no_torch() -> None:
    """Snakemake and `frontier dvc-yaml` read the declarations; entry functions are strings, imported when run."""
    code = (
        "import sys, frontier.pipeline; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'deepspeed'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
