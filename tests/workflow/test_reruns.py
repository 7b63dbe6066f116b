"""What runs again when params change, under Snakemake and DVC sharing one workspace, and the README's commands.

A stage runs again exactly when its output on disk was not built from the current params, as that output
records them (params.resolved.yaml), whichever tool built or restored it: a --config change reruns the stages
whose declared params changed and what follows them, never the others (the params file a run writes is no
part of it); a result restored from other params (`dvc checkout`, a copy) runs again, once; one that matches
does not, whatever Snakemake last ran. Rules find `frontier` without the venv on PATH. The README's "Snakemake
and DVC" commands run as written, in order, in one tiny workspace (the checks above ride along where cheap).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontier.config import load_params, to_dict
from frontier.params_files import mark_outdated
from frontier.pipeline import STAGES
from frontier.provenance import RECORDED_PARAMS, outdated_outputs, record_stage
from tests.test_exp_view import assert_view_matches
from tests.workflow.helpers import (
    dvc_stages,
    readme_commands,
    snakemake_jobs,
    stage_env,
    without_frontier_on_path,
)
from tests.workflow.test_end_to_end import TINY, _project, _run, _snakemake

# Train and what follows it: what a train-only (or optimizer) change reruns.
FROM_TRAIN = {"train", "evaluate", "finetune", "merge", "evaluate_finetuned", "preference", "merge_preference",
              "evaluate_preference", "report"}  # fmt: skip
README_SECTION = "## Snakemake and DVC"
MODEL = "runs/train/model/model.safetensors"


def _output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr  # Snakemake reports on stderr, DVC on stdout


def _stages(output: str) -> set[str]:
    """The pipeline's stages among the rules a Snakemake run ran, or would run (rule all left out)."""
    return snakemake_jobs(output) & set(STAGES)


# ---- the record decides (no pipeline run) --------------------------------------------------------------------


def test_an_output_is_current_exactly_when_its_record_matches_the_declared_params(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = load_params(None)
    current = to_dict(params)
    for stage in STAGES.values():
        for out in stage.outs:
            Path(out).mkdir(parents=True)
            if stage.params:  # what the stage itself writes beside its outputs (provenance given: no probing)
                record_stage(params, out, stage.name, provenance={})
        assert outdated_outputs(stage, current) == {}, stage.name  # records read back equal what they recorded

    train = STAGES["train"]
    other = to_dict(params)
    other["train"]["max_steps"] += 1
    other["launch"]["threads_per_rank"] = 3  # recorded with launch:, but train declares only its rank layout
    other["prepare"]["max_docs"] = 7  # not train's
    steps = current["train"]["max_steps"]
    assert outdated_outputs(train, other) == {"runs/train": [f"train.max_steps: {steps} there, {steps + 1} now"]}
    assert outdated_outputs(STAGES["prepare"], other) == {"data/prepared": ["prepare.max_docs: null there, 7 now"]}
    assert outdated_outputs(STAGES["merge"], other) == {}  # reads no params: nothing to compare

    (tmp_path / "runs/train" / RECORDED_PARAMS).write_text("!!python/object:os.system [echo]\n")
    assert outdated_outputs(train, current) == {"runs/train": [f"no readable {RECORDED_PARAMS}"]}
    shutil.rmtree(tmp_path / "runs/train")
    assert outdated_outputs(train, other) == {}  # missing: Snakemake's (or DVC's) own business


def test_the_outdated_stamp_is_dated_now_only_while_the_output_is_outdated(tmp_path: Path) -> None:
    stamp = mark_outdated("train", [], tmp_path)
    assert stamp == tmp_path / "train.outdated" and stamp.stat().st_mtime == 0 and stamp.read_text() == ""
    before = time.time() - 1
    mark_outdated("train", ["runs/train: train.max_steps: 12 there, 13 now"], tmp_path)
    first = stamp.read_text()
    assert stamp.stat().st_mtime > before and "train.max_steps: 12 there, 13 now" in first
    # New content every time: Snakemake ignores a newer input whose checksum it recorded at the job's last run.
    assert mark_outdated("train", ["runs/train: train.max_steps: 12 there, 13 now"], tmp_path).read_text() != first
    mark_outdated("train", [], tmp_path, touch=False)  # a job's own Snakemake leaves the date alone
    assert stamp.stat().st_mtime > before
    mark_outdated("train", [], tmp_path)
    assert stamp.stat().st_mtime == 0 and stamp.read_text() == ""

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    stamp.unlink()
    stamp.symlink_to(victim)
    mark_outdated("train", [], tmp_path)  # a planted link is replaced, its target neither dated nor written
    assert not stamp.is_symlink() and victim.read_text() == "keep me" and victim.stat().st_mtime > 0


# ---- Snakemake, on a tiny workspace ------------------------------------------------------------------------


@pytest.mark.slow
def test_snakemake_reruns_a_stage_whose_output_records_other_params(tmp_path: Path) -> None:
    root = _project(tmp_path, TINY)
    smk = str(Path(sys.executable).parent / "snakemake")  # the venv's, as `.venv/bin/snakemake` is typed

    # The venv not activated: the rule still finds the venv's `frontier`.
    bare = without_frontier_on_path(stage_env())
    assert shutil.which("frontier", path=bare["PATH"]) is None
    proc = subprocess.run([smk, "--cores", "1", "prepare"], cwd=root, env=bare, capture_output=True, text=True)
    assert proc.returncode == 0, _output(proc)[-4000:]
    built = tmp_path / "prepared-120"
    shutil.copytree(root / "data/prepared", built)  # built from params.yaml: prepare.max_docs 120

    other = ("--config", "prepare={max_docs: 100}")
    assert _stages(_output(_snakemake(root, "prepare", *other))) == {"prepare"}
    # The earlier result back, as `dvc checkout` restores it; Snakemake's metadata still says max_docs 100.
    shutil.rmtree(root / "data/prepared")
    shutil.copytree(built, root / "data/prepared")
    dry = _output(_snakemake(root, "-n", "prepare", *other))
    assert _stages(dry) == {"prepare"}, dry
    assert "data/prepared was not built from this run's params (prepare.max_docs: 120 there, 100 now)" in dry
    assert _stages(_output(_snakemake(root, "-n", "prepare"))) == set()  # it matches params.yaml: kept

    assert _stages(_output(_snakemake(root, "prepare", *other))) == {"prepare"}
    assert _stages(_output(_snakemake(root, "-n", "prepare", *other))) == set()  # once, not twice


# ---- the README's commands, as written ---------------------------------------------------------------------


def _readme_commands() -> list[str]:
    """The section's command lines, but the experiment view (`dvc exp show`, or `frontier exp`): only a table
    of what the runs recorded, whose layout is tested with it."""
    commands = readme_commands(README_SECTION)
    argvs = [shlex.split(c, comments=True) for c in commands]
    assert len(commands) >= 8 and {"snakemake", "dvc"} <= {a[0] for a in argvs}, commands
    return [c for c, a in zip(commands, argvs) if a[:3] != ["dvc", "exp", "show"] and a[:2] != ["frontier", "exp"]]


def _check_reruns_after_full_build(root: Path) -> None:
    """Dry runs on a fresh full build: nothing to do; a prepare key reruns everything; a train key, train on."""
    assert _stages(_output(_snakemake(root, "-n"))) == set()
    assert _stages(_output(_snakemake(root, "-n", "--config", "prepare={max_docs: 100}"))) == set(STAGES)
    assert _stages(_output(_snakemake(root, "-n", "--config", "train={max_steps: 13}"))) == FROM_TRAIN


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole pipeline twice, and from train on twice: 9 min on 2 busy cores
def test_readme_commands_run_as_written_in_one_workspace(tmp_path: Path) -> None:
    root = _project(tmp_path, TINY)
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], root)

    config_line = None
    for line in _readme_commands():
        out = _output(_run(["bash", "-c", line], root))
        argv = shlex.split(line, comments=True)
        if argv == ["snakemake", "--cores", "all"]:
            _check_reruns_after_full_build(root)
        elif argv[0] == "snakemake" and "--config" in argv:
            config_line = argv
            assert _stages(out) == FROM_TRAIN, out  # not the data stages: their params did not change
        elif argv[:2] == ["snakemake", "--report"]:
            assert (root / argv[2]).is_file()
        elif argv == ["dvc", "repro"]:
            assert dvc_stages(out) == set(STAGES), out  # no dvc.lock yet
            assert "up to date" in _output(_run([sys.executable, "-m", "dvc", "status"], root))
            _commit(root, "repro")  # what `git checkout` returns to below
        elif argv[:3] == ["dvc", "exp", "run"]:
            assert dvc_stages(out) == FROM_TRAIN, out  # optimizer: train's and finetune's, and what follows
        elif argv[:3] == ["dvc", "metrics", "show"]:
            assert "bits_per_byte" in out
    assert config_line is not None

    # Both tools in one workspace: what each output records decides, not what Snakemake last ran. DVC built
    # everything now on disk from the workspace's params (the experiment's), though Snakemake last trained
    # under the README's --config: nothing to do.
    assert _stages(_output(_snakemake(root, "-n"))) == set()
    # The README's --config again, with params.yaml as committed: exactly what Snakemake ran with last time, so
    # its metadata calls train up to date, but on disk is the experiment's result (other max_steps and lr).
    _run(["git", "checkout", "-q", "--", "params.yaml"], root)
    dry = _output(_snakemake(root, "-n", *config_line[config_line.index("--config") :]))
    assert _stages(dry) == FROM_TRAIN, dry
    assert "runs/train was not built from this run's params" in dry and "optimizer.lr" in dry
    assert "runs/finetune was not built from this run's params" in dry
    _check_dvc_workspace(root, tmp_path)


def _commit(root: Path, message: str) -> None:
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


def _check_dvc_workspace(root: Path, tmp_path: Path) -> None:
    """What DVC users rely on once `dvc repro` and `dvc exp run` have run (no training here: nothing reruns)."""
    dvc = [sys.executable, "-m", "dvc"]
    # Metrics are numbers, and name no machine path.
    metrics_json = _run([*dvc, "metrics", "show", "--json"], root).stdout
    assert str(tmp_path) not in metrics_json
    values = list(_leaves(json.loads(metrics_json)))
    assert values and all(v is None or isinstance(v, (int, float)) for v in values), values[:5]
    plots = json.loads(_run([*dvc, "plots", "show", "--json"], root).stdout)
    named = {
        "loss",
        "learning_rate",
        "grad_norm",
        "throughput",
        "finetune_loss",
        "preference_loss",
        "preference_rewards",
    }
    assert named <= set(plots.get("data", plots)), sorted(plots.get("data", plots))
    # The README's short view of experiments (`frontier exp`): within 120 columns, the values DVC reports.
    exps = json.loads(_run([*dvc, "exp", "show", "--json"], root).stdout)
    view = _run([sys.executable, "-m", "frontier", "exp"], root).stdout
    names = assert_view_matches(view, exps)
    assert "optimizer.lr" in names and "eval.bpb" in names and "ft_heldout.tuned" in names, view

    # The experiment applied and committed (params.yaml, dvc.lock and outputs as it left them).
    exp_model = (root / MODEL).read_bytes()  # the workspace still holds the experiment's outputs
    (name,) = [e["name"] for rev in exps if rev.get("experiments") for exp in rev["experiments"] for e in exp["revs"]]
    _run([*dvc, "exp", "apply", name], root)
    _run([*dvc, "remote", "add", "-d", "store", str(tmp_path / "remote")], root)
    _commit(root, "experiment")
    assert "up to date" in _output(_run([*dvc, "status"], root))

    # Data and models travel through a DVC remote: push here, pull in a fresh clone, nothing to redo.
    _run([*dvc, "push"], root)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    _run([*dvc, "pull"], clone)
    assert (clone / MODEL).read_bytes() == (root / MODEL).read_bytes() == exp_model
    assert "Running stage" not in _run([*dvc, "repro"], clone).stdout

    # Back to the commit before: DVC restores its outputs from the cache and nothing retrains.
    _run(["git", "checkout", "-q", "HEAD~1"], root)
    _run([*dvc, "checkout"], root)
    again = _run([*dvc, "repro"], root)
    assert "Running stage" not in again.stdout, again.stdout
    assert (root / MODEL).read_bytes() != exp_model
    assert json.loads((root / "runs/train/metrics.json").read_text())["steps"] == TINY["train"]["max_steps"]


def _leaves(node: object) -> Iterator[object]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    else:
        yield node
