"""The README's SLURM command, as written, on a real one-node cluster started on this machine.

munged, slurmctld and slurmd (Debian's slurm-wlm) run for the module, a 2-CPU node without accounting (as a
small lab's cluster is); the README's command submits every stage through snakemake-executor-plugin-slurm
with the repository's workflow profile, each one job asking for what params' launch: section says. Train's
two tasks are started by srun (the plugin's MPI convention: resources tasks + mpi, the shell starting with
`srun -n 2`), each one rank of the run; the per-step losses must match one rank run locally on the same
global batch. The first run is killed outright mid-job: the next one must say what still runs and how to
stop it, then, once it is stopped, clear the lock the killed run left and run to the end.

Skips only where the cluster cannot start: not root, or no SLURM/munge binaries (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from frontier.config.launch import ClusterJobConfig
from frontier.pipeline import STAGES
from tests.train.helpers import read_rows
from tests.workflow.helpers import stage_env
from tests.workflow.test_end_to_end import REPO, STAGE_OUTPUTS, TINY, _merge, _project, _run

pytestmark = pytest.mark.slow

# Where every SLURM command finds its configuration. Not SLURM_CONF: the plugin's job step removes SLURM_*
# variables from the environment of the rule it runs, so srun inside the job would not find the cluster.
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by tests/workflow/test_slurm.py (removed when the test ends)"
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
# Every wait is bounded, and together they stay under the pipeline test's pytest-timeout (so the cluster's
# teardown runs).
START_TIMEOUT_S = 60
STEP_TIMEOUT_S = 180  # a first job to start, the one-rank reference run
SNAKEMAKE_TIMEOUT_S = 900  # the whole pipeline, ten jobs one after the other: about 7 minutes on 2 busy cores


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


def _documented_command(path: Path, marker: str) -> str:
    """The first command of the first ```bash block after `marker` in a Markdown file, as written there (its
    continuation lines joined, a trailing comment left out): what a user following that page types."""
    text = path.read_text()
    block = text[text.index(marker) :].split("```bash\n", 1)[1].split("```", 1)[0]
    command = []
    for line in block.splitlines():
        command.append(line.rstrip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return shlex.join(shlex.split(" ".join(command), comments=True))


def test_the_readme_slurm_block_holds_only_the_command_the_cluster_test_runs() -> None:
    """Every command of the README's SLURM block runs in the test below: a second one could not drift unseen."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("**SLURM.**") :].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith((" ", "\t"))]
    assert len(commands) == 1, commands


# The tiny end-to-end pipeline, with a loss per step. Train and finetune run as 2-task jobs (one rank a task, a
# CPU each): the same global batch (4 windows) as one rank of micro batch 4, in two ranks of micro batch 2. The
# other stages ask for launch.cluster's defaults (2 CPUs, 4 GB, an hour): they must fit this 2-CPU node.
PIPELINE = _merge(TINY, {"train": {"max_steps": 6, "log_every": 1, "eval_every": 3, "micro_batch_size": 2},
                         "engine": {"monitor": {"system_every_s": 0, "progress_bar": False}},
                         "launch": {"nproc_per_node": 2, "threads_per_rank": 1, "mem_mb": 1500, "runtime_min": 10}})  # fmt: skip
UNFINISHED = ("PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING")


def _job_state(job_id: str) -> str:
    shown = _cmd("scontrol", "show", "job", job_id).stdout
    return m.group(1) if (m := re.search(r"JobState=(\w+)", shown)) else ""


def _wait(what: str, ready: Callable[[], object], timeout: float, cluster: Cluster) -> object:
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s" + cluster.logs()
        time.sleep(0.3)
    return value


@pytest.mark.timeout(START_TIMEOUT_S + 2 * STEP_TIMEOUT_S + 300 + SNAKEMAKE_TIMEOUT_S)
def test_the_readme_slurm_command_runs_the_whole_pipeline(tmp_path: Path, slurm_cluster: Cluster) -> None:
    """The README's SLURM command, as written, on a cluster without accounting and no account to charge: every
    stage one SLURM job, train a 2-task job whose losses match one rank run locally. The run is first killed
    outright mid-job: the next one names the job still running and the command that stops it, and once that
    ran, removes the lock the killed run left and runs to the end."""
    command = _documented_command(REPO / "README.md", "**SLURM.**")
    assert command == _documented_command(REPO / "docs" / "scaling.md", "\n## SLURM\n"), "README and docs disagree"
    argv = shlex.split(command)
    assert argv[0] == "snakemake", command  # the venv's, first on stage_env()'s PATH
    root = _project(tmp_path, PIPELINE)
    node, asks = _cmd("scontrol", "show", "node").stdout, ClusterJobConfig()  # what the data stages ask for
    memory = int(re.search(r"RealMemory=(\d+)", node).group(1))
    assert memory >= asks.mem_mb, f"the node has {memory} MB, less than launch.cluster.mem_mb's default: {node}"

    # Killed outright (SIGKILL: no cleanup) while its first job runs; the job is held (suspended) so that it
    # is still unfinished when the next run looks.
    killed = subprocess.Popen(argv, cwd=root, env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        here = str(root.resolve())
        job_id = _wait("a running job of the first run", lambda: next(
            (j for j, state, where in (ln.split("|") for ln in _cmd("squeue", "-h", "-o", "%i|%T|%Z").stdout.split())
             if state == "RUNNING" and where == here), None), STEP_TIMEOUT_S, slurm_cluster)  # fmt: skip
        assert _cmd("scontrol", "suspend", job_id).returncode == 0
    finally:
        killed.kill()
        killed.wait(timeout=30)
    assert list((root / ".snakemake" / "locks").glob("*.lock")), "the killed run left no lock to test"
    refused = subprocess.run(argv, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0, refused.stderr[-3000:]
    assert f"its work still runs here: SLURM job {job_id};" in refused.stderr, refused.stderr[-3000:]
    stop = re.search(r"\(or stop it: (scancel \d+)\)", refused.stderr).group(1)
    assert _cmd(*shlex.split(stop)).returncode == 0  # the one command the message names
    _wait(f"job {job_id} over", lambda: _job_state(job_id) not in UNFINISHED, 60, slurm_cluster)

    started = time.monotonic()
    proc = subprocess.run(argv, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT_S)
    print(f"{command}: {time.monotonic() - started:.0f} s")
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{command} failed:\n{out[-6000:]}{slurm_cluster.logs()}")
    assert f"removed the lock left in {here} by an interrupted run" in proc.stderr, proc.stderr[-3000:]
    assert "job states come from squeue" in proc.stderr, proc.stderr[-3000:]  # this cluster has no accounting

    # Every stage ran as a SLURM job (the killed run's one again: its output was incomplete), each completed.
    jobs = dict(re.findall(r"SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", out))
    assert sorted(jobs.values()) == sorted(STAGES), out[-3000:]
    shown = {rule: _cmd("scontrol", "show", "job", job).stdout for job, rule in jobs.items()}
    assert all("JobState=COMPLETED" in job for job in shown.values()), shown
    # launch.cluster's defaults: 2 CPUs for a multithreaded stage (its threads: --workers), 1 for the others, 4 GB
    assert asks.cpus == 2 and f"CPUs/Task={asks.cpus}" in shown["tokenize"] and "CPUs/Task=1" in shown["prepare"]
    assert "frontier tokenize --params params.yaml" in out and f"--workers {asks.cpus} " in out, out[-3000:]
    assert asks.mem_mb == 4096 and all("MinMemoryNode=4G" in shown[r] for r in ("prepare", "tokenize", "report"))
    # train: two tasks, whose ranks srun started as step 0 of that job
    train_job = next(job for job, rule in jobs.items() if rule == "train")
    assert "NumTasks=2" in shown["train"] and "CPUs/Task=1" in shown["train"], shown["train"]
    assert "srun -n 2 --cpus-per-task=1 --kill-on-bad-exit=1 frontier train" in out, out[-3000:]
    assert f"StepId={train_job}.0" in slurm_cluster.slurmd_log(), slurm_cluster.logs()
    assert all((root / p).is_dir() for p in STAGE_OUTPUTS), [p for p in STAGE_OUTPUTS if not (root / p).is_dir()]

    metrics = json.loads((root / "runs/train/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 6, metrics
    # One rank, here, on the same tokens: micro batch 4 = the same global batch as 2 ranks x 2. Per-step
    # loss, gradient norm and learning rate match (fp32 summation order aside).
    reference = yaml.safe_load((root / "params.yaml").read_text())
    reference["launch"]["nproc_per_node"] = 1
    reference["train"]["micro_batch_size"] = 4
    (root / "reference.yaml").write_text(yaml.safe_dump(reference, sort_keys=False))
    ref = subprocess.run(
        [sys.executable, "-m", "frontier", "train", "--params", "reference.yaml", "--data", "data/tokens",
         "--tokenizer", "data/tokenizer", "--out", "reference/train", "--checkpoints", "reference/ckpt"],
        cwd=root, env={**stage_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-4000:]
    expected, got = read_rows(root / "reference/train/plots/train.csv"), read_rows(root / "runs/train/plots/train.csv")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for a, b in zip(expected, got):
        for key in ("loss", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, a, b)

    # Snakemake's report of that run, without --cores (the threads of a rule must not need them).
    _run([sys.executable, "-m", "snakemake", "--report", "report.zip"], root, timeout=60)
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
