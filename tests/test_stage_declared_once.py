"""A stage is declared once: one `Stage` entry in frontier/pipeline.py is all the CLI, Snakemake and dvc.yaml need.

A copy of the package and the workflow gets a toy stage added to ALL_STAGES (and nothing else but the toy's
own module); `frontier`, `snakemake` and `frontier dvc-yaml` then run on that copy, in subprocesses, and
each must know the toy. It launches ranks and is parallel, so those properties are seen to reach each
consumer too (--local_rank and --workers, a cluster job's launch resources, the rule's --workers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frontier.pipeline import ALL_STAGES, STAGES

REPO = Path(__file__).resolve().parents[1]
ANCHOR = "ALL_STAGES: dict[str, Stage] = _index(\n    [\n"
TOY = """\
        Stage(
            "toy_count",
            "toy_stage:count",
            "count the prepared documents (a toy)",
            (
                Flag("data", "prepared documents directory", "data/prepared"),
                Flag("out", "toy output directory", "runs/toy"),
            ),
            deps=("data/prepared",),
            outs=("runs/toy",),
            params=("seed", "launch.nnodes"),
            parallel=True,
            launches=True,
        ),
"""
TOY_MODULE = '''\
"""The toy stage's entry function, imported by the CLI only when `frontier toy-count` runs."""

import json
from pathlib import Path

from frontier.provenance import record_stage


def count(params, data: Path, out: Path, workers: int = 0) -> int:
    docs = sorted(p.name for p in data.iterdir())
    out.mkdir(parents=True)
    (out / "count.json").write_text(json.dumps({"docs": len(docs), "seed": params.seed, "workers": workers}))
    record_stage(params, out, "toy_count", provenance={"command": "toy"})  # a given record: no torch probe
    return len(docs)
'''
CMD = "frontier toy-count --params params.yaml --data data/prepared --out runs/toy"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, workflow and params.yaml, copied, with the toy declared in the one place a stage is."""
    root = tmp_path_factory.mktemp("declared_once")
    shutil.copytree(REPO / "frontier", root / "frontier", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "workflow", root / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Snakefile", "params.yaml"):
        shutil.copy2(REPO / name, root / name)
    pipeline = root / "frontier" / "pipeline.py"
    text = pipeline.read_text(encoding="utf-8")
    assert text.count(ANCHOR) == 1, "the stage list moved: update ANCHOR"
    pipeline.write_text(text.replace(ANCHOR, ANCHOR + TOY), encoding="utf-8")
    (root / "toy_stage.py").write_text(TOY_MODULE, encoding="utf-8")
    return root


def _run(project: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A Python module run against the copy (its frontier first on the path, ahead of the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or project, capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


def test_the_toy_is_not_in_the_real_pipeline() -> None:
    assert "toy_count" not in ALL_STAGES  # else the checks below would prove nothing


def test_the_cli_has_the_toy(project: Path) -> None:
    top = _run(project, "frontier", "--help")
    assert top.returncode == 0, top.stderr
    assert "toy-count" in top.stdout and "count the prepared documents (a toy)" in top.stdout, top.stdout
    sub = _run(project, "frontier", "toy-count", "--help")
    assert sub.returncode == 0, sub.stderr
    for text in ("--params PARAMS", "--data DATA", "--out OUT", "toy output directory",
                 "--workers WORKERS", "default: toy_count.workers"):  # fmt: skip
        assert text in sub.stdout, (text, sub.stdout)

    prepared = project / "data" / "prepared"
    prepared.mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (prepared / name).write_text("{}\n")
    # one rank (no CUDA probe for nproc_per_node auto): the stage runs in this process
    proc = _run(project, "frontier", *CMD.split()[1:], "--workers", "2", "--set", "launch.nproc_per_node=1",
                "--local_rank=0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seed = yaml.safe_load((project / "params.yaml").read_text())["seed"]
    assert json.loads((project / "runs/toy/count.json").read_text()) == {"docs": 3, "seed": seed, "workers": 2}
    # record_stage took the toy's sections from its declaration (launch.nnodes: the launch section)
    assert list(yaml.safe_load((project / "runs/toy/params.resolved.yaml").read_text())) == ["seed", "launch"]


def test_snakemake_has_the_toy_rule(project: Path, tmp_path: Path) -> None:
    rules = _run(project, "snakemake", "--list-rules")
    assert rules.returncode == 0, rules.stderr
    assert "toy_count" in rules.stdout.split(), rules.stdout
    shutil.copy2(project / "params.yaml", tmp_path / "params.yaml")
    dry = _run(project, "snakemake", "toy_count", "-n", "-p", "--cores", "2", "--directory", str(tmp_path),
               "--snakefile", str(project / "Snakefile"), "--configfile", str(tmp_path / "params.yaml"))  # fmt: skip
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    lines = dry.stdout.splitlines()
    start = lines.index("rule toy_count:")
    job = lines[start : next(i for i in range(start + 1, len(lines)) if lines[i].startswith("Shell command:")) + 1]
    assert job[-1].startswith(f"Shell command: {CMD} --workers 2 "), job
    resources = next(line for line in job if line.strip().startswith("resources:"))
    assert "nodes=1" in resources and "tasks=1" in resources, resources  # a launched stage's cluster job


def test_dvc_yaml_has_the_toy_stage(project: Path) -> None:
    proc = _run(project, "frontier", "dvc-yaml", "--path", "dvc.yaml")
    assert proc.returncode == 0, proc.stderr
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert stages["toy_count"] == {
        "cmd": CMD,
        "deps": ["data/prepared"],
        "params": ["seed", "launch.nnodes"],
        "outs": ["runs/toy"],
    }
    assert set(stages) == {*STAGES, "toy_count"}
