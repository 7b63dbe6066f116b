"""Provenance: what produced an output, recorded beside it at the time the stage ran."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
import yaml

from frontier.config import Params
from frontier.provenance import collect_provenance, git_state, read_provenance, record_stage
from frontier.utils.hashing import sha256_file
from frontier.utils.lock import read_marker

REPO = Path(__file__).resolve().parents[1]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_record_names_commit_lock_versions_hardware_and_command() -> None:
    record = collect_provenance(["/opt/venv/bin/frontier", "train", "--params", "my params.yaml"])
    assert record["command"] == "frontier train --params 'my params.yaml'"
    assert record["git"]["commit"] == _git(REPO, "rev-parse", "HEAD")
    assert record["git"]["dirty"] == bool(_git(REPO, "status", "--porcelain"))
    marker = read_marker()
    assert record["lock"]["file"] == marker["file"] and record["lock"]["sha256"] == sha256_file(REPO / marker["file"])
    assert record["lock"]["matches"], record["lock"]["differences"]
    assert record["packages"]["torch"] == torch.__version__
    import transformers

    assert record["packages"]["transformers"] == transformers.__version__
    assert record["cuda"]["torch_cuda"] == torch.version.cuda
    assert record["hardware"]["cpus"] == os.cpu_count() and record["hardware"]["memory_gib"] > 0
    assert record["hardware"]["cpu"] and record["os"] and record["hostname"]
    json.dumps(record)  # JSON-friendly throughout


def test_git_state_sees_modified_and_untracked_files(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    clean = git_state(tmp_path)
    assert clean == {"commit": _git(tmp_path, "rev-parse", "HEAD"), "dirty": False, "changed": []}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] and git_state(tmp_path)["changed"] == ["a.py"]
    _git(tmp_path, "checkout", "-q", "a.py")
    (tmp_path / "b.py").write_text("new\n")  # an untracked source file changes what runs too
    assert git_state(tmp_path)["dirty"] and git_state(tmp_path)["changed"] == ["b.py"]


def test_git_state_outside_a_checkout_says_so(tmp_path: Path) -> None:
    state = git_state(tmp_path / "nowhere")
    assert state["commit"] is None and state["dirty"] is None and "not a git checkout" in state["note"]


def test_record_stage_writes_params_and_provenance(tmp_path: Path) -> None:
    record_stage(Params(), tmp_path, "prepare")  # the sections the stage declares in frontier.pipeline
    assert list(yaml.safe_load((tmp_path / "params.resolved.yaml").read_text())) == ["prepare"]
    record = read_provenance(tmp_path)
    assert record["git"]["commit"] and record["packages"]["torch"] == torch.__version__
    given = {"command": "elsewhere", "hostname": "trainer-7"}
    record_stage(Params(), tmp_path, "prepare", provenance=given)  # train passes the record it took at start
    assert read_provenance(tmp_path) == given


def test_read_provenance_of_an_output_without_one(tmp_path: Path) -> None:
    assert read_provenance(tmp_path) is None
    (tmp_path / "provenance.json").write_text("{not json")
    assert read_provenance(tmp_path) is None
