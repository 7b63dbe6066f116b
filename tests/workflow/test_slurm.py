"""The train stage as a 2-task SLURM job, on a real one-node cluster started on this machine.

munged, slurmctld and slurmd (Debian's slurm-wlm) run for the module; Snakemake submits train through
snakemake-executor-plugin-slurm with the repository's workflow profile. The job's two tasks are started by
srun (the plugin's MPI convention: resources tasks + mpi, the shell starting with `srun -n 2`), each one
rank of the run; the per-step losses must match one rank run locally on the same global batch.

Skips only where the cluster cannot start: not root, or no SLURM/munge binaries (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.train.helpers import read_rows
from tests.workflow.helpers import stage_env
from tests.workflow.test_end_to_end import REPO, TINY, _merge, _project, _run

pytestmark = pytest.mark.slow

# Where every SLURM command finds its configuration. Not SLURM_CONF: the plugin's job step removes SLURM_*
# variables from the environment of the rule it runs, so srun inside the job would not find the cluster.
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by tests/workflow/test_slurm.py (removed when the test ends)"
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
# Every wait is bounded, and together they stay under pytest-timeout's 900 s (so the cluster's teardown runs).
START_TIMEOUT_S = 60
STEP_TIMEOUT_S = 180  # the data stages here, the one-rank reference run
SNAKEMAKE_TIMEOUT_S = 300


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def _why_not() -> str | None:
    """Why a SLURM cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    missing = [t for t in TOOLS if _which(t) is None]
    if missing:
        return f"no {', '.join(missing)} (Debian: apt-get install slurm-wlm munge; .ci/run does)"
    if SLURM_CONF.exists() and MARK not in SLURM_CONF.read_text(errors="replace"):
        return f"{SLURM_CONF} exists: this machine belongs to a real cluster, whose configuration stays as it is"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([_which(args[0]) or args[0], *args[1:]], capture_output=True, text=True, timeout=timeout)


def _munge_works() -> bool:
    try:
        cred = _cmd("munge", "-n", timeout=10)
        if cred.returncode != 0:
            return False
        unmunge = [_which("unmunge") or "unmunge"]
        return subprocess.run(unmunge, input=cred.stdout, capture_output=True, text=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge(run: Path) -> subprocess.Popen | None:
    """munged with the machine's key (created if missing); None when one is already running (left as it is)."""
    if _munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    try:
        uid, gid = pwd.getpwnam("munge").pw_uid, grp.getgrnam("munge").gr_gid
    except KeyError:
        uid = gid = 0
    for d in (Path("/etc/munge"), Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        os.chown(key, uid, gid)
        key.chmod(0o400)
    # -F: in the foreground, so the process is ours to stop; as the munge user where it exists (munged
    # refuses root without --force).
    proc = subprocess.Popen([_which("munged"), "-F"] + (["--force"] if uid == 0 else []), user=uid, group=gid,
                            extra_groups=[], stdout=open(run / "munged.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _munge_works():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"munged did not start: {(run / 'munged.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _node_line() -> str:
    """This machine as a SLURM node: slurmd -C's hardware, at least 2 CPUs, a margin on memory."""
    out = _cmd("slurmd", "-C").stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), "")
    cpus = int(re.search(r"\bCPUs=(\d+)", line).group(1)) if "CPUs=" in line else os.cpu_count() or 1
    memory = int(re.search(r"RealMemory=(\d+)", line).group(1)) if "RealMemory=" in line else 4096
    # Two tasks need two CPUs; on a one-CPU machine slurmd is told to take the configured count (config_overrides).
    # Memory: 90% of what slurmd measures, so a small change in it cannot drain the node.
    return f"NodeName={socket.gethostname().split('.')[0]} NodeAddr=127.0.0.1 CPUs={max(2, cpus)} RealMemory={memory * 9 // 10} State=UNKNOWN"  # noqa: E501


@dataclass
class Cluster:
    run: Path  # state, spool and daemon logs

    def slurmd_log(self) -> str:
        return (self.run / "slurmd.log").read_text(errors="replace")

    def logs(self) -> str:
        return "".join(
            f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(self.run.glob("*.log"))
        )


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    run = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    conf = f"""{MARK}
ClusterName=frontiertest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
SlurmdParameters=config_overrides
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol (no accounting database: the plugin polls squeue)
MinJobAge=600
ReturnToService=2
InactiveLimit=0
KillWait=5
StateSaveLocation={run}/state
SlurmdSpoolDir={run}/spool
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={run}/slurmctld.log
SlurmdLogFile={run}/slurmd.log
{_node_line()}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    for d in ("state", "spool"):
        (run / d).mkdir()
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(conf)
    munged = slurmctld = slurmd = None
    try:
        munged = _start_munge(run)
        # -D: foreground (the processes are ours to stop); -c: a fresh state; -i: ignore the missing old one
        slurmctld = subprocess.Popen([_which("slurmctld"), "-D", "-c", "-i"], stdout=subprocess.DEVNULL,
                                     stderr=open(run / "slurmctld.stderr.log", "w"))  # noqa: SIM115  # fmt: skip
        slurmd = subprocess.Popen([_which("slurmd"), "-D"], stdout=subprocess.DEVNULL,
                                  stderr=open(run / "slurmd.stderr.log", "w"))  # noqa: SIM115  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        state = ""
        while state != "idle":
            if time.monotonic() > deadline or slurmctld.poll() is not None or slurmd.poll() is not None:
                pytest.fail(f"the SLURM node did not become idle in {START_TIMEOUT_S} s (state {state!r}):"
                            + Cluster(run).logs())  # fmt: skip
            with contextlib.suppress(subprocess.TimeoutExpired):
                state = _cmd("sinfo", "-h", "-N", "-o", "%t", timeout=10).stdout.strip()
            time.sleep(0.3)
        yield Cluster(run)
    finally:
        # Jobs first (their steps outlive slurmd otherwise), then the daemons we started, then our config.
        if slurmctld is not None and slurmctld.poll() is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _cmd("scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name, timeout=10)
                deadline = time.monotonic() + 20
                while _cmd("squeue", "-h", "-t", "RUNNING,COMPLETING", timeout=10).stdout.strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
        for proc in (slurmd, slurmctld, munged):
            _stop(proc)
        if SLURM_CONF.exists() and MARK in SLURM_CONF.read_text(errors="replace"):
            SLURM_CONF.unlink()


# The tiny end-to-end run, with a loss per step; the SLURM run splits the same global batch (4 windows) over
# two ranks of micro batch 2.
TRAIN = _merge(TINY, {"train": {"max_steps": 6, "log_every": 1, "eval_every": 3},
                      "engine": {"monitor": {"system_every_s": 0, "progress_bar": False}}})  # fmt: skip
ON_SLURM = ["--config", "launch={nproc_per_node: 2, threads_per_rank: 1, mem_mb: 1500, runtime_min: 10}",
            "train={micro_batch_size: 2}"]  # fmt: skip


def test_train_runs_as_a_two_task_slurm_job(tmp_path: Path, slurm_cluster: Cluster) -> None:
    root = _project(tmp_path, TRAIN)
    # The data stages run here (same --config, so the SLURM run finds them up to date): tokenize asks a cluster
    # for 4 CPUs, more than this node may have.
    _run([sys.executable, "-m", "snakemake", "--cores", "2", "tokenize", *ON_SLURM], root, timeout=STEP_TIMEOUT_S)

    # One rank, here: micro batch 4 = the same global batch as 2 ranks x 2.
    reference = yaml.safe_load((root / "params.yaml").read_text())
    reference["launch"]["nproc_per_node"] = 1
    (root / "reference.yaml").write_text(yaml.safe_dump(reference, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "frontier", "train", "--params", "reference.yaml", "--data", "data/tokens",
         "--tokenizer", "data/tokenizer", "--out", "reference/train", "--checkpoints", "reference/ckpt"],
        cwd=root, env={**stage_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "train", "--executor", "slurm", "--workflow-profile",
         "workflow/profiles/slurm", *ON_SLURM,
         # a small test cluster: quick polls, no accounting (squeue answers), no account to charge
         "--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks",
         "2", "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-keep-successful-logs"],
        cwd=root, env=stage_env(), capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT_S,
    )  # fmt: skip
    print(f"snakemake --executor slurm train: {time.monotonic() - started:.0f} s")
    if proc.returncode != 0:
        job_logs = "".join(f"\n--- {p} ---\n{p.read_text(errors='replace')[-4000:]}"
                           for p in sorted((root / ".snakemake" / "slurm_logs").rglob("*.log")))  # fmt: skip
        pytest.fail(f"snakemake --executor slurm failed:\n{proc.stderr[-5000:]}{job_logs}{slurm_cluster.logs()}")

    # It ran as a SLURM job of two tasks, whose ranks srun started as step 0 of that job.
    logs = sorted((root / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert [p.parent.name for p in logs] == ["rule_train"], logs  # the data stages were not resubmitted
    job_id = logs[0].stem
    job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=20).stdout
    assert "JobState=COMPLETED" in job and "NumTasks=2" in job and "CPUs/Task=1" in job, job
    assert "srun -n 2 --cpus-per-task=1 --kill-on-bad-exit=1 frontier train" in logs[0].read_text(), logs[0].read_text()
    assert f"StepId={job_id}.0" in slurm_cluster.slurmd_log(), slurm_cluster.logs()

    metrics = json.loads((root / "runs/train/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 6, metrics
    # Same global batch, same run: per-step loss, gradient norm and learning rate (fp32 summation order aside).
    expected, got = read_rows(root / "reference/train/plots/train.csv"), read_rows(root / "runs/train/plots/train.csv")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for a, b in zip(expected, got):
        for key in ("loss", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, a, b)

    # Snakemake's report of that run, without --cores (the threads of a rule must not need them).
    _run([sys.executable, "-m", "snakemake", "train", "--report", "report.zip", *ON_SLURM], root, timeout=60)
    with zipfile.ZipFile(root / "report.zip") as archive:
        assert any(n.endswith("/metrics.json") for n in archive.namelist()), archive.namelist()


def test_a_batch_script_is_not_a_rank_but_sruns_tasks_are(tmp_path: Path, slurm_cluster: Cluster) -> None:
    """What frontier reads of SLURM's environment, in a real 2-task job: the batch script (where a user may
    run `frontier train` without srun) is one process of its own; srun's two tasks are ranks 0 and 1."""
    probe = ("from frontier.train.launch.distributed import _read_env; from frontier.train.launch.launch import started_by_launcher; "
             "print(*_read_env(), started_by_launcher())")  # fmt: skip
    script = tmp_path / "job.sh"
    script.write_text(
        f"#!/bin/bash\ncd {REPO}\necho batch $({sys.executable} -c '{probe}')\n"
        f"srun -n 2 bash -c 'echo task $({sys.executable} -c \"{probe}\")'\n"
    )
    out = tmp_path / "job.out"
    submitted = _cmd("sbatch", "--parsable", "-n", "2", "--cpus-per-task=1", "--mem=500", "-o", str(out),
                     "--export=ALL", str(script))  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    state = ""
    while state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, f"job {job_id} still {state!r}" + slurm_cluster.logs()
        time.sleep(0.5)
        shown = _cmd("scontrol", "show", "job", job_id).stdout
        state = m.group(1) if (m := re.search(r"JobState=(\w+)", shown)) else ""
    lines = out.read_text().split("\n") if out.is_file() else []
    assert state == "COMPLETED", (state, lines, slurm_cluster.logs())
    assert "batch 0 1 0 False" in lines, lines  # rank, world size, local rank, started by a launcher
    assert sorted(ln for ln in lines if ln.startswith("task ")) == ["task 0 2 0 True", "task 1 2 1 True"], lines
