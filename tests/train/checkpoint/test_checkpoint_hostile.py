"""The checkpoints directory in a hostile world: planted links, foreign checkpoints, damaged content.

Each test is an attack by someone who can write into ``checkpoints_dir`` (or the workspace), run
against the real store and training loop: the write must never land outside the directory, another
run's checkpoint must never displace this run's own, and damaged content must never reach the live
run (the previous verified checkpoint is resumed instead, or one CheckpointError line).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from frontier.errors import CheckpointError, ConfigError
from frontier.train.checkpoint import checkpoint as checkpoint_module
from frontier.train.checkpoint import manifest
from frontier.train.checkpoint.checkpoint import CheckpointStore, step_dir_name
from frontier.train.checkpoint.engine_io import weights_only_loads
from frontier.train.launch.distributed import init_distributed
from frontier.train.run import train
from frontier.utils.atomic import atomic_file
from tests.train.helpers import params

EVERY_2 = ("train.checkpoint.every_steps=2", "train.checkpoint.keep_last=3")
VICTIM = "the user's precious file\n"


def _run(corpus, out: Path, ckpt: Path, *overrides: str) -> dict:
    return train(params(*EVERY_2, *overrides), corpus.tokens, corpus.tokenizer, out, ckpt)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, corpus) -> Path:
    """A finished run's checkpoints directory: steps 2, 4 and 6 (copied by each test before an attack)."""
    root = tmp_path_factory.mktemp("hostile")
    _run(corpus, root / "out", root / "ckpt")
    return root / "ckpt"


@pytest.fixture(scope="module")
def other(tmp_path_factory, corpus) -> Path:
    """Another run's checkpoints directory (other params, 8 steps): steps 4, 6 and 8."""
    root = tmp_path_factory.mktemp("other")
    _run(corpus, root / "out", root / "ckpt", "optimizer.lr=0.002", "train.max_steps=8")
    return root / "ckpt"


def _run_id(checkpoint: Path) -> str:
    return json.loads((checkpoint / manifest.MANIFEST).read_text())["run_id"]


def _copy(saved: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved, ckpt, symlinks=True)
    return ckpt


def _plant(link: Path, kind: str, outside: Path) -> Path | None:
    """Make `link` a symbolic link of `kind` (to a directory, to a file, dangling); the target it names."""
    target = {"dir": outside / "dir", "file": outside / "victim.txt", "dangling": outside / "nowhere"}[kind]
    if kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
        (target / "keep.txt").write_text(VICTIM)
    elif kind == "file":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(VICTIM)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return target


def _untouched(outside: Path) -> None:
    """Nothing written outside: the planted targets hold exactly what the attacker put there."""
    found = {p.relative_to(outside).as_posix(): p.read_text() for p in outside.rglob("*") if p.is_file()}
    assert set(found) <= {"dir/keep.txt", "victim.txt"}, found
    assert all(text == VICTIM for text in found.values()), found


def _rewrite_manifest(ckpt: Path) -> None:
    """The attacker also rewrites the manifest, so the damage verifies: only validation can catch it."""
    meta = json.loads((ckpt / manifest.MANIFEST).read_text())
    (ckpt / manifest.MANIFEST).unlink()
    manifest.write_manifest(ckpt, {k: v for k, v in meta.items() if k not in ("files", "format")})
    assert manifest.verify(ckpt) is None


# -- A. no write follows a link or leaves the directory ------------------------------------------


@pytest.mark.parametrize("kind", ["file", "dangling", "hardlink", "fifo"])
def test_a_planted_lock_never_writes_through_to_its_target(tmp_path, kind, caplog):
    ckpt, outside = tmp_path / "ckpt", tmp_path / "outside"
    ckpt.mkdir()
    if kind == "hardlink":
        outside.mkdir()
        (outside / "victim.txt").write_text(VICTIM)
        os.link(outside / "victim.txt", ckpt / ".lock")
    elif kind == "fifo":
        os.mkfifo(ckpt / ".lock")
    else:
        _plant(ckpt / ".lock", kind, outside)
    with caplog.at_level(logging.WARNING, logger="frontier.train"):
        CheckpointStore(ckpt, init_distributed()).lock()
    assert not (ckpt / ".lock").is_symlink() and (ckpt / ".lock").is_file()
    assert (ckpt / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    assert os.stat(ckpt / ".lock").st_nlink == 1
    if outside.exists():
        _untouched(outside)
    assert not (outside / "nowhere").exists()  # a dangling link's target is never created
    assert "lock" in caplog.text and "removed that name" in caplog.text


def test_a_directory_planted_as_the_lock_is_one_clear_error(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / ".lock" / "sub").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"\.lock is .*a directory; expected the run's lock file"):
        CheckpointStore(ckpt, init_distributed()).lock()


@pytest.mark.parametrize("kind", ["dir", "dangling"])
def test_a_logs_link_does_not_redirect_the_logs(tmp_path, corpus, kind):
    ckpt, outside = tmp_path / "ckpt", tmp_path / "outside"
    _plant(ckpt / "logs", kind, outside)
    assert _run(corpus, tmp_path / "out", ckpt)["steps"] == 6
    assert (ckpt / "logs").is_dir() and not (ckpt / "logs").is_symlink()
    assert (ckpt / "logs" / "train.csv").is_file()
    _untouched(outside)


@pytest.mark.parametrize("kind", ["file", "hardlink"])
def test_a_link_inside_the_logs_does_not_reach_a_file_outside(tmp_path, saved, corpus, kind):
    """A level down: logs/ is real, but the file the monitor rewrites by name is a link (or hard link)."""
    ckpt, outside = _copy(saved, tmp_path), tmp_path / "outside"
    (ckpt / "logs" / "train.csv").unlink()
    if kind == "hardlink":
        outside.mkdir()
        (outside / "victim.txt").write_text(VICTIM)
        os.link(outside / "victim.txt", ckpt / "logs" / "train.csv")
    else:
        _plant(ckpt / "logs" / "train.csv", kind, outside)
    _run(corpus, tmp_path / "out", ckpt)  # resumes at step 6: the monitor rewrites train.csv from the state
    _untouched(outside)
    assert "loss" in (ckpt / "logs" / "train.csv").read_text()


@pytest.mark.parametrize("kind", ["dir", "dangling"])
def test_an_archived_link_does_not_carry_the_checkpoints_away(tmp_path, saved, corpus, kind):
    ckpt, outside = _copy(saved, tmp_path), tmp_path / "outside"
    _plant(ckpt / "archived", kind, outside)
    assert _run(corpus, tmp_path / "out", ckpt, "train.resume=none")["steps"] == 6
    _untouched(outside)
    assert not (ckpt / "archived").is_symlink()
    (moved,) = (ckpt / "archived").iterdir()
    assert {p.name for p in moved.iterdir()} >= {"step_00000006", "logs"}
    assert manifest.verify(moved / "step_00000006") is None


@pytest.mark.parametrize("kind", ["dir", "file", "dangling", "plain file"])
def test_a_planted_temporary_directory_is_removed_and_the_save_goes_on(tmp_path, corpus, kind, caplog):
    ckpt, outside = tmp_path / "ckpt", tmp_path / "outside"
    tmp = ckpt / f".{step_dir_name(4)}.tmp"
    if kind == "plain file":
        ckpt.mkdir()
        tmp.write_text("in the way")
    else:
        _plant(tmp, kind, outside)
    with caplog.at_level(logging.WARNING, logger="frontier.train"):
        assert _run(corpus, tmp_path / "out", ckpt)["steps"] == 6
    names = [p.name for p in CheckpointStore(ckpt, init_distributed()).checkpoints()]
    assert names == [step_dir_name(s) for s in (2, 4, 6)]
    assert not os.path.lexists(tmp)
    if outside.exists():
        _untouched(outside)
    if kind != "plain file":
        assert f"{tmp} was a link to" in caplog.text and "removed the link (not its target)" in caplog.text


def test_a_temporary_directory_swapped_for_a_link_mid_save_is_caught(tmp_path, corpus, monkeypatch):
    """Between check and use: once the ranks have written, the attacker moves the directory away and
    links its name to a directory of theirs, where the manifest would be written and then renamed in."""
    ckpt, outside = tmp_path / "ckpt", tmp_path / "outside"
    outside.mkdir()
    real_write_rng = checkpoint_module.write_rng

    def write_rng_then_swap(directory: Path, rank: int) -> None:
        real_write_rng(directory, rank)
        if not os.path.lexists(tmp_path / "moved"):
            directory.rename(tmp_path / "moved")
            directory.symlink_to(outside)

    monkeypatch.setattr(checkpoint_module, "write_rng", write_rng_then_swap)
    with pytest.raises(CheckpointError, match=r"\.step_00000002\.tmp was replaced while the checkpoint was written"):
        _run(corpus, tmp_path / "out", ckpt)
    assert list(outside.iterdir()) == []
    assert not any(p.is_symlink() for p in ckpt.glob("step_*"))


def test_a_step_directory_linked_from_elsewhere_is_never_resumed(tmp_path, saved, corpus, caplog):
    """A link named like a newer checkpoint of this very run (a copy elsewhere, manifest and all)."""
    ckpt = _copy(saved, tmp_path)
    elsewhere = tmp_path / "elsewhere" / step_dir_name(6)
    shutil.copytree(ckpt / step_dir_name(6), elsewhere)
    (ckpt / step_dir_name(90)).symlink_to(elsewhere)
    with caplog.at_level(logging.INFO, logger="frontier.train"):
        _run(corpus, tmp_path / "out", ckpt)
    assert f"resumed from {ckpt / step_dir_name(6)} at step 6" in caplog.text
    assert step_dir_name(90) not in [p.name for p in CheckpointStore(ckpt, init_distributed()).checkpoints()]


def test_a_link_inside_a_checkpoint_makes_it_untrusted(tmp_path, saved):
    """Same bytes, so the hash matches: but a link's target lies outside and can change after hashing."""
    ckpt = _copy(saved, tmp_path)
    newest = ckpt / step_dir_name(6)
    (tmp_path / "state.json").write_bytes((newest / "trainer_state.json").read_bytes())
    (newest / "trainer_state.json").unlink()
    (newest / "trainer_state.json").symlink_to(tmp_path / "state.json")
    assert "trainer_state.json is a symbolic link" in manifest.verify(newest)
    assert CheckpointStore(ckpt, init_distributed()).newest_valid() == ckpt / step_dir_name(4)


@pytest.mark.parametrize("kind", ["file", "dangling"])
def test_atomic_file_never_opens_a_planted_temporary(tmp_path, monkeypatch, kind):
    """An attacker who predicts the temporary's name (here: a fixed uuid) and plants a link there."""
    import uuid

    fixed = uuid.UUID("12345678" * 4)
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)
    out, outside = tmp_path / "out.json", tmp_path / "outside"
    link = tmp_path / f".out.json.tmp-{os.getpid()}-{fixed.hex[:8]}"
    _plant(link, kind, outside)
    with pytest.raises(FileExistsError), atomic_file(out) as f:
        f.write("payload")
    _untouched(outside)
    assert not (outside / "nowhere").exists() and not out.exists()
    assert link.is_symlink()  # not ours to remove: the writer made no such name


@pytest.mark.parametrize("kind", ["file", "dangling", "hardlink"])
def test_a_link_planted_in_the_logs_mid_run_is_never_written_through(tmp_path, kind):
    """After start-up (its checks done), between two log writes: the appending writers open by name again."""
    from frontier.config.monitor import AlertsConfig
    from frontier.train.monitor.alerts import Alerts
    from frontier.train.monitor.monitor import TRAIN_FIELDS, write_csv

    logs, outside = tmp_path / "logs", tmp_path / "outside"
    row = {"step": 1, "loss": 2.0, "lr": 0.1, "grad_norm": 1.0, "tokens_per_s": 10.0}
    write_csv(logs / "train.csv", TRAIN_FIELDS, [row])
    alerts = Alerts(AlertsConfig(), logs / "alerts.jsonl")
    alerts.check_step(1, float("nan"), None)
    for name in ("train.csv", "alerts.jsonl"):
        (logs / name).unlink()
        if kind == "hardlink":
            outside.mkdir(exist_ok=True)
            (outside / "victim.txt").write_text(VICTIM)
            os.link(outside / "victim.txt", logs / name)
        else:
            (outside / "victim.txt").unlink(missing_ok=True)
            _plant(logs / name, kind, outside)
        with pytest.raises(OSError, match="refusing"):
            if name == "train.csv":
                write_csv(logs / name, TRAIN_FIELDS, [row | {"step": 2}], mode="a")
            else:
                alerts.check_step(2, float("inf"), None)
        _untouched(outside)
        assert not (outside / "nowhere").exists()
    write_csv(logs / "train.csv", TRAIN_FIELDS, [row])  # a whole file replaces the name, never writes through it
    assert not (logs / "train.csv").is_symlink() and os.stat(logs / "train.csv").st_nlink == 1
    _untouched(outside)


@pytest.mark.parametrize("where", ["dvclive", "sub/dvclive"])
def test_a_dvclive_link_out_of_the_workspace_is_refused(tmp_path, monkeypatch, where):
    from frontier.config.monitor import MonitorConfig
    from frontier.train.monitor.trackers import DVCLiveTracker

    workspace, outside = tmp_path / "work", tmp_path / "outside"
    workspace.mkdir()
    _plant(workspace / where.split("/")[0], "dir", outside)
    monkeypatch.chdir(workspace)
    with pytest.raises(ConfigError, match=r"engine\.monitor\.dvclive_dir: .*(link|outside the workspace)"):
        DVCLiveTracker(MonitorConfig(dvclive_dir=where), "run", resume=False)
    _untouched(outside)


# -- B. a foreign checkpoint never displaces this run's own --------------------------------------


def test_a_foreign_newer_checkpoint_neither_wins_nor_archives_ours(tmp_path, saved, other, corpus, caplog):
    ckpt = _copy(saved, tmp_path)
    shutil.copytree(other / step_dir_name(8), ckpt / step_dir_name(8))  # complete, verifies, higher step
    with caplog.at_level(logging.INFO, logger="frontier.train"):
        metrics = _run(corpus, tmp_path / "out", ckpt)
    assert f"resumed from {ckpt / step_dir_name(6)} at step 6" in caplog.text
    assert metrics["steps"] == 6
    assert not (ckpt / "archived").exists()  # ours were not moved aside for it
    ignored = [r.message for r in caplog.records if "ignored: made by another run" in r.message]
    assert len(ignored) == 1 and "optimizer.lr" in ignored[0]
    assert manifest.verify(ckpt / step_dir_name(8)) is None  # theirs untouched, not pruned either
    assert _run_id(ckpt / step_dir_name(8)) != _run_id(ckpt / step_dir_name(6))


def test_a_save_onto_another_runs_step_archives_it_instead_of_deleting_it(tmp_path, saved, other, corpus, caplog):
    """This run resumes at step 2 and saves step 4, where another run's step 4 sits: moved aside, not deleted."""
    ckpt = _copy(saved, tmp_path)
    for step in (4, 6):
        shutil.rmtree(ckpt / step_dir_name(step))
    shutil.copytree(other / step_dir_name(4), ckpt / step_dir_name(4))
    theirs, ours = _run_id(ckpt / step_dir_name(4)), _run_id(ckpt / step_dir_name(2))
    with caplog.at_level(logging.INFO, logger="frontier.train"):
        assert _run(corpus, tmp_path / "out", ckpt)["steps"] == 6
    assert f"resumed from {ckpt / step_dir_name(2)} at step 2" in caplog.text
    (archived,) = (ckpt / "archived").iterdir()
    assert [p.name for p in archived.iterdir()] == [step_dir_name(4)]
    assert manifest.verify(archived / step_dir_name(4)) is None and _run_id(archived / step_dir_name(4)) == theirs
    assert [_run_id(p) for p in CheckpointStore(ckpt, init_distributed()).checkpoints()] == [ours] * 3
    moved = [r.message for r in caplog.records if "another run's checkpoint" in r.message]
    assert len(moved) == 1 and str(archived) in moved[0], caplog.text


def test_a_directory_of_only_another_runs_checkpoints_is_reported_once(tmp_path, other, corpus, caplog):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(other, ckpt, symlinks=True)
    with caplog.at_level(logging.INFO, logger="frontier.train"):
        assert _run(corpus, tmp_path / "out", ckpt)["steps"] == 6
    about = [r.message for r in caplog.records if r.levelno >= logging.WARNING and step_dir_name(8) in r.message]
    assert len(about) == 1 and "belong to another run (its params differ: optimizer.lr" in about[0], about
    (archived,) = (ckpt / "archived").iterdir()
    assert {p.name for p in archived.iterdir()} >= {step_dir_name(s) for s in (4, 6, 8)}


# -- C. every field of what is resumed is validated; damage falls back -----------------------------


def _damage_state(ckpt: Path, how: str) -> None:
    path = ckpt / "trainer_state.json"
    state = json.loads(path.read_text())
    if how == "emptied":
        state = {}
    elif how == "missing step":
        del state["step"]
    elif how == "step as text":
        state["step"] = str(state["step"])
    elif how == "negative tokens":
        state["tokens"] = -5
    elif how == "lr_scale NaN":
        state["lr_scale"] = float("nan")
    elif how == "lr_scale 1e9":
        state["lr_scale"] = 1e9
    elif how == "rows not a list":
        state["train_rows"] = "x"
    elif how == "step behind the weights":
        state["step"] = 0
    elif how == "not an object":
        state = [1, 2]
    path.write_text(json.dumps(state))


def _damage_rng(ckpt: Path, how: str) -> None:
    path = ckpt / "rng" / "rank_00000.json"
    rng = json.loads(path.read_text())
    if how == "not json":
        path.write_text("{")
        return
    if how == "python state cut":
        rng["python"][1] = rng["python"][1][:10]
    elif how == "torch state cut":
        rng["torch"] = rng["torch"][:40]
    elif how == "numpy key out of range":
        rng["numpy"][1][0] = 2**40
    elif how == "missing torch":
        del rng["torch"]
    path.write_text(json.dumps(rng))


def _damage_optimizer(ckpt: Path, how: str) -> None:
    (path,) = (ckpt / "ds").rglob("*model_states.pt")
    with weights_only_loads():
        sd = torch.load(path, map_location="cpu", weights_only=True)
    entry = sd["optimizer"]["state"][0]
    if how == "exp_avg reshaped":
        entry["exp_avg"] = entry["exp_avg"].reshape(-1)[:-1].clone()
    elif how == "exp_avg_sq NaN":
        entry["exp_avg_sq"] = torch.full_like(entry["exp_avg_sq"], float("nan"))
    torch.save(sd, path)


DAMAGE = [
    *[("state", h) for h in ("emptied", "missing step", "step as text", "negative tokens", "lr_scale NaN",
                             "lr_scale 1e9", "rows not a list", "step behind the weights", "not an object")],
    *[("rng", h) for h in ("not json", "python state cut", "torch state cut", "numpy key out of range",
                           "missing torch")],
    *[("optimizer", h) for h in ("exp_avg reshaped", "exp_avg_sq NaN")],
]  # fmt: skip
_DAMAGERS = {"state": _damage_state, "rng": _damage_rng, "optimizer": _damage_optimizer}


@pytest.mark.parametrize(("part", "how"), DAMAGE)
def test_damaged_content_falls_back_to_the_previous_checkpoint(tmp_path, saved, corpus, caplog, part, how):
    ckpt = _copy(saved, tmp_path)
    newest = ckpt / step_dir_name(6)
    _DAMAGERS[part](newest, how)
    _rewrite_manifest(newest)
    with caplog.at_level(logging.INFO, logger="frontier.train"):
        metrics = _run(corpus, tmp_path / "out", ckpt)
    skipped = [r.message for r in caplog.records if f"{newest} skipped" in r.message]
    assert len(skipped) == 1, caplog.text
    assert f"resumed from {ckpt / step_dir_name(4)} at step 4" in caplog.text
    assert metrics["steps"] == 6 and not (ckpt / "archived").exists()


def test_no_usable_checkpoint_left_is_one_clear_error(tmp_path, saved, corpus):
    ckpt = _copy(saved, tmp_path)
    for step in (2, 4, 6):
        _damage_state(ckpt / step_dir_name(step), "emptied")
        _rewrite_manifest(ckpt / step_dir_name(step))
    with pytest.raises(CheckpointError, match=r"none of this run's 3 checkpoint\(s\) can be resumed \(the last "
                       r"problem: .*field 'step' is missing.*set train.resume=none"):  # fmt: skip
        _run(corpus, tmp_path / "out", ckpt)
    assert not (tmp_path / "out").exists()


def test_all_of_this_runs_checkpoints_corrupt_is_one_clear_error_not_a_silent_restart(tmp_path, saved, corpus):
    """Bit rot in every checkpoint (no manifest rewritten): starting again at step 0 on top of them would
    throw their steps away without a word beyond a warning."""
    ckpt = _copy(saved, tmp_path)
    for step in (2, 4, 6):
        (path,) = (ckpt / step_dir_name(step) / "ds").rglob("*model_states.pt")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"none of this run's 3 checkpoint\(s\) can be resumed \(the last "
                       r"problem: step_00000002: .*sha256"):  # fmt: skip
        _run(corpus, tmp_path / "out", ckpt)
    assert [p.name for p in CheckpointStore(ckpt, init_distributed()).checkpoints()] == [
        step_dir_name(s) for s in (2, 4, 6)
    ]


def test_an_explicitly_named_damaged_checkpoint_is_an_error_not_a_fallback(tmp_path, saved, corpus):
    ckpt = _copy(saved, tmp_path)
    newest = ckpt / step_dir_name(6)
    _damage_state(newest, "lr_scale NaN")
    _rewrite_manifest(newest)
    with pytest.raises(CheckpointError, match=r"trainer_state.json: unusable trainer state \(lr_scale=nan is not"):
        _run(corpus, tmp_path / "out", ckpt, f"train.resume={newest}")


def test_more_cuda_rng_states_than_visible_devices_restore_the_first_ones(tmp_path, monkeypatch, caplog):
    """Resumed with fewer GPUs visible per process: not damage (that would mark every checkpoint unusable)."""
    import base64

    from frontier.train.checkpoint import state as state_module

    blob = torch.arange(16, dtype=torch.uint8)
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda i=0: blob.clone())
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [blob.clone()] * 2)  # as the saving run had
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state_module.write_rng(tmp_path, 0)
    rng = json.loads(state_module.rng_file(tmp_path, 0).read_text())
    assert len(rng["cuda"]) == 2 and base64.b64decode(rng["cuda"][1]) == bytes(range(16))
    with caplog.at_level(logging.WARNING, logger="frontier.train"):
        state_module.restore_rng(state_module.read_rng(tmp_path, 0))
    assert [[bytes(t.tolist()) for t in states] for states in restored] == [[bytes(range(16))]]
    assert "2 CUDA generator(s), 1 device(s) are visible here: restored the first 1" in caplog.text
