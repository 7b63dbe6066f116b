"""One source of truth: dvc.yaml and the Snakemake rules agree with frontier/pipeline.py."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from frontier.cli import build_parser
from frontier.pipeline import STAGES, command, dvc_yaml, render_dvc_yaml

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
    used = {part for line in proc.stdout.splitlines() for part in line.split() if part.startswith(".snakemake/")}
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
