"""The train stage starts its own ranks from launch: params (torch's elastic agent), as a user runs it.

Every run here is ``python -m frontier train`` with no launcher in the environment: the stage
itself decides how many ranks to start, on how many "nodes", and what its exit code says.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from frontier.config.launch import LaunchConfig
from frontier.train.launch.launch import should_launch, started_by_launcher, threads_per_rank
from frontier.train.launch.signals import EXIT_INTERRUPTED
from frontier.train.run import train
from tests.train.helpers import (
    BASE,
    assert_same_run,
    free_port,
    kill_tree,
    losses,
    params,
    stage,
    stage_log,
    tiny_params,
    wait_for,
)

# -- when does a stage launch? ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}, True),  # torchrun, even for one rank
        ({"RANK": "0"}, False),  # half a launcher's environment is no launcher
        ({"RANK": "0", "WORLD_SIZE": "1"}, False),  # what a one-process run leaves its children (for DeepSpeed)
        ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}, True),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}, True),  # srun -n 2
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, False),  # srun -n 1: one rank, ours
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, False),  # the batch script of a 2-task job
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "4294967294"}, False),  # the batch step
    ],
)
def test_started_by_launcher(env, expected):
    assert started_by_launcher(env) is expected


def test_should_launch(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # auto = 1 rank without CUDA
    assert not should_launch(LaunchConfig(), {})
    assert should_launch(LaunchConfig(nproc_per_node=2), {})
    assert should_launch(LaunchConfig(nnodes=2, master_port=29500), {})
    assert should_launch(LaunchConfig(launcher="torchrun"), {})  # one rank, still under the agent
    assert not should_launch(LaunchConfig(launcher="external"), {})
    ranks = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    assert not should_launch(LaunchConfig(nproc_per_node=2), ranks)  # never recursive


def test_threads_per_rank(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # what Snakemake gives the rule
    assert threads_per_rank(LaunchConfig(), 2) == 4
    assert threads_per_rank(LaunchConfig(), 16) == 1  # never 0
    assert threads_per_rank(LaunchConfig(threads_per_rank=3), 2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert threads_per_rank(LaunchConfig(), 1) >= 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("launch.node_rank=1", "launch.node_rank: 1 is outside [0, nnodes=1)"),
        ("launch.nproc_per_node=0", "launch.nproc_per_node: got 0, expected a value >= 1"),
        ("launch.launcher=srun", "launch.launcher: got 'srun', expected one of 'auto', 'torchrun', 'external'"),
        ("launch.launcher=external", None),
    ],
)
def test_bad_launch_params_are_one_line(override, message):
    from frontier.errors import ConfigError

    if message is None:
        params(override)  # valid alone
        with pytest.raises(ConfigError, match="launcher: 'external' takes the ranks from the outer launcher"):
            params(override, "launch.nproc_per_node=2")
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        params(override)


def test_several_nodes_by_hand_need_a_port_said_before_anything_starts():
    from frontier.errors import ConfigError
    from frontier.train.launch.launch import launch_ranks

    cfg = params("launch.nnodes=2").launch  # valid as params: under srun the ranks derive their port
    with pytest.raises(ConfigError, match="launch.master_port: 2 nodes must agree on a port"):
        launch_ranks(cfg, ["train"], "train")


def test_an_outer_launcher_that_disagrees_with_launch_params_is_named(caplog):
    from frontier.train.launch.launch import check_outer_launcher

    with caplog.at_level("WARNING", logger="frontier.launch"):
        outer = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1"}
        check_outer_launcher(LaunchConfig(nproc_per_node=8), "train", outer)
        check_outer_launcher(LaunchConfig(), "train", outer)  # auto: nothing to say
        check_outer_launcher(LaunchConfig(nproc_per_node=2), "train", outer)
    assert [r.getMessage() for r in caplog.records] == [
        "train: launch: asks for 8 rank(s) (nnodes x nproc_per_node) but the outer launcher started 2; training "
        "with 2 (global batch = micro x accumulation x 2)"
    ]


# -- real ranks ------------------------------------------------------------------------------------


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_stage_starts_two_ranks_that_match_one(tmp_path, corpus, one_rank):
    out = tmp_path / "out"
    proc = stage(tiny_params(*BASE, "train.micro_batch_size=2", "launch.nproc_per_node=2"), corpus, out,
                 tmp_path / "ckpt")  # fmt: skip
    assert proc.wait(timeout=240) == 0, stage_log(out)
    assert "starting 2 rank(s) on this node" in stage_log(out)
    assert _metrics(out)["world_size"] == 2 and _metrics(out)["global_batch"] == 4
    assert_same_run(one_rank, out)


@pytest.mark.slow
def test_two_nodes_on_localhost_match_one_node(tmp_path, corpus, one_rank):
    # Two launchers, node rank 0 and 1, one rank each, meeting at node 0's address; one shared
    # output and checkpoint directory, as a shared file system gives a cluster's nodes.
    out, ckpt, port = tmp_path / "out", tmp_path / "ckpt", free_port()
    node = ("train.micro_batch_size=2", "launch.nnodes=2", "launch.nproc_per_node=1", f"launch.master_port={port}")
    procs = [
        stage(tiny_params(*BASE, *node, f"launch.node_rank={rank}"), corpus, out, ckpt, log_name=f"node{rank}")
        for rank in (0, 1)
    ]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_tree(p)
    assert codes == [0, 0], stage_log(out, "node0") + stage_log(out, "node1")
    assert _metrics(out)["world_size"] == 2
    assert_same_run(one_rank, out)


def _steps(ckpt: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in ckpt.glob("step_*"))


# 1,000 steps (a few seconds a rank pair) with a checkpoint every 50: long enough to be interrupted
LONG = ("train.max_steps=1000", "train.checkpoint.every_steps=50", "train.log_every=100", "schedule.warmup_steps=10")


@pytest.mark.slow
def test_killed_rank_ends_the_stage_in_one_line_and_the_rerun_resumes(tmp_path, corpus):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    run = tiny_params(*LONG, "launch.nproc_per_node=2")
    proc = stage(run, corpus, out, ckpt)
    wait_for(lambda: (ckpt / "step_00000050" / "manifest.json").is_file(), proc, lambda: stage_log(out))
    ranks = psutil.Process(proc.pid).children()
    assert len(ranks) == 2
    ranks[1].kill()  # SIGKILL: no handler, no error file; the other rank is left waiting on it
    killed_at = time.monotonic()
    code = proc.wait(timeout=120)
    assert code != 0
    assert time.monotonic() - killed_at < 60  # the agent stops the survivor: no hang on a dead peer
    last = stage_log(out).strip().splitlines()[-1]
    assert last.startswith("frontier train: error: rank ") and "died of SIGKILL" in last, stage_log(out)
    assert "Traceback" not in stage_log(out)  # the survivor's broken collective is one line too
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)  # none left behind
    assert not out.exists()

    rerun = stage(run, corpus, out, ckpt, log_name="rerun")
    assert rerun.wait(timeout=240) == 0, stage_log(out, "rerun")
    assert "resumed from" in stage_log(out, "rerun")
    assert _metrics(out)["steps"] == 1000


@pytest.mark.slow
def test_sigterm_checkpoints_every_rank_and_one_rank_resumes_the_same_run(tmp_path, corpus):
    """SIGTERM to the stage: both ranks save one checkpoint, the stage exits 3; the rerun on ONE rank
    (same global batch: 2 x 2 -> 1 x 4) continues that run instead of starting again, and ends where an
    uninterrupted one-rank run ends."""
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    short = (*LONG, "train.max_steps=300")
    proc = stage(tiny_params(*short, "train.micro_batch_size=2", "launch.nproc_per_node=2"), corpus, out, ckpt)
    wait_for(lambda: (ckpt / "step_00000050" / "manifest.json").is_file(), proc, lambda: stage_log(out))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == EXIT_INTERRUPTED, stage_log(out)
    log = stage_log(out)
    assert log.count("stopped by SIGTERM") == 3  # each rank got the stop request, and the stage says so
    stopped_at = _steps(ckpt)[-1]
    assert log.strip().splitlines()[-1] == (
        f"frontier train: error: train: stopped by SIGTERM at step {stopped_at}; checkpoint saved in {ckpt}. "
        "Run the same command again to resume"
    )
    assert 50 <= stopped_at < 300

    one = stage(tiny_params(*short, "train.micro_batch_size=4", "launch.nproc_per_node=1"), corpus, out, ckpt,
                log_name="one")  # fmt: skip
    assert one.wait(timeout=240) == 0, stage_log(out, "one")
    assert f"resumed from {ckpt}/step_{stopped_at:08d}" in stage_log(out, "one")
    assert _metrics(out)["world_size"] == 1 and _metrics(out)["steps"] == 300

    straight = tmp_path / "straight"
    train(params(*short, "train.micro_batch_size=4"), corpus.tokens, corpus.tokenizer, straight, tmp_path / "ck1")
    expected, got = losses(straight), losses(out)
    assert len(expected) == len(got) == 300 // 100
    for a, b in zip(expected, got):
        assert abs(a - b) <= 1e-4 * abs(a), (expected, got)


@pytest.mark.slow
def test_ranks_checkpoint_and_end_when_the_stage_process_is_killed(tmp_path, corpus):
    """SIGKILL to the stage (the OOM killer, a scheduler's escalation): its ranks, in sessions of their own,
    get SIGTERM from the kernel, save one checkpoint together and exit instead of training on unowned."""
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    proc = stage(tiny_params(*LONG, "launch.nproc_per_node=2"), corpus, out, ckpt)
    wait_for(lambda: (ckpt / "step_00000050" / "manifest.json").is_file(), proc, lambda: stage_log(out))
    ranks = psutil.Process(proc.pid).children()
    assert len(ranks) == 2
    proc.kill()
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(ranks, timeout=120)
    for p in alive:
        p.kill()
    assert not alive, stage_log(out)
    stopped_at = _steps(ckpt)[-1]  # 50 itself when the signal came right after that save
    assert stopped_at >= 50
    # both ranks stopped at the step of the newest checkpoint, then nothing more
    assert stage_log(out).count(f"stopped by SIGTERM at step {stopped_at};") == 2, stage_log(out)
    assert not out.exists()


@pytest.mark.slow
def test_ctrl_c_reaches_every_rank_as_a_stop_request(tmp_path, corpus):
    """SIGINT to the stage (Ctrl-C; the ranks sit in sessions of their own and see nothing of the terminal):
    forwarded as a stop request, both ranks save one checkpoint and the stage exits 3."""
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    proc = stage(tiny_params(*LONG, "launch.nproc_per_node=2"), corpus, out, ckpt)
    wait_for(lambda: (ckpt / "step_00000050" / "manifest.json").is_file(), proc, lambda: stage_log(out))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == EXIT_INTERRUPTED, stage_log(out)
    stopped_at = _steps(ckpt)[-1]
    assert stage_log(out).count(f"stopped by SIGTERM at step {stopped_at}") == 3, stage_log(out)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]
    assert not left  # no rank outlives the stage
