"""The launcher's environment, read once: each row is what a real launcher sets in the process it starts.

torchrun's and DeepSpeed's rows are what torch 2.x's elastic agent and deepspeed.launcher.launch set (DeepSpeed's
launcher also passes --local_rank=N, which frontier.cli accepts and ignores); srun's and the batch script's are
what Slurm 22.05 sets (SLURM_* and SLURMD_*, less host-specific values); mpirun's what Open MPI 4.1 sets.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from frontier.errors import ConfigError
from frontier.train.launch.environment import (
    VARIABLES,
    LauncherEnv,
    export_rank,
    export_rendezvous,
    ranks_on_this_node,
    read_launcher_env,
    resolve_nproc_per_node,
)

REPO = Path(__file__).resolve().parents[3]

# The environments as the launchers write them: a table, kept as written (one launcher's variables per block).
# fmt: off
# torchrun --nproc-per-node 2 (one node): rank 1
TORCHRUN = {
    "RANK": "1", "GROUP_RANK": "0", "ROLE_RANK": "1", "ROLE_NAME": "default", "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1", "ROLE_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "True",
    "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "TORCHELASTIC_ERROR_FILE": "/tmp/torchelastic_x/none_y/attempt_0/1/error.json", "OMP_NUM_THREADS": "1",
}
# torchrun --nnodes 2 --nproc-per-node 4 --node-rank 1: rank 5
TORCHRUN_NODE_1 = {
    **TORCHRUN, "RANK": "5", "GROUP_RANK": "1", "ROLE_RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
    "WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "2", "ROLE_WORLD_SIZE": "8", "MASTER_ADDR": "gpu03",
    "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "frontier-train",
}
# srun -n 2 in the batch script of `sbatch -n 2 --cpus-per-task=1 --mem=500`: task 1
SRUN = {
    "SLURMD_NODENAME": "gpu03", "SLURM_CLUSTER_NAME": "cluster", "SLURM_CPUS_ON_NODE": "2", "SLURM_CPUS_PER_TASK": "1",
    "SLURM_DISTRIBUTION": "block", "SLURM_GTIDS": "0,1", "SLURM_JOBID": "4242", "SLURM_JOB_CPUS_PER_NODE": "2",
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "job.sh", "SLURM_JOB_NODELIST": "gpu03", "SLURM_JOB_NUM_NODES": "1",
    "SLURM_JOB_PARTITION": "debug", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.3", "SLURM_LOCALID": "1",
    "SLURM_MEM_PER_NODE": "500", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_NODELIST": "gpu03",
    "SLURM_NPROCS": "2", "SLURM_NTASKS": "2", "SLURM_PRIO_PROCESS": "0", "SLURM_PROCID": "1",
    "SLURM_SRUN_COMM_HOST": "10.0.0.3", "SLURM_SRUN_COMM_PORT": "41443", "SLURM_STEPID": "0", "SLURM_STEP_ID": "0",
    "SLURM_STEP_LAUNCHER_PORT": "41443", "SLURM_STEP_NODELIST": "gpu03", "SLURM_STEP_NUM_NODES": "1",
    "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_SUBMIT_DIR": "/home/u/frontier",
    "SLURM_TASKS_PER_NODE": "2", "SLURM_TASK_PID": "15348", "SLURM_UMASK": "0022",
}
# srun -N 2 -n 4 in a 2-node job: task 3 (the second on the second node)
SRUN_NODE_1 = {
    **SRUN, "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4",
    "SLURM_GTIDS": "2,3", "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_NODELIST": "gpu[03-04]",
    "SLURM_STEP_NODELIST": "gpu[03-04]", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURMD_NODENAME": "gpu04",
}
# srun -n 1 (how Snakemake's SLURM executor runs a job's Snakemake): the job's one process
SRUN_ONE = {
    **SRUN, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1", "SLURM_NPROCS": "1", "SLURM_GTIDS": "0",
    "SLURM_STEPID": "1", "SLURM_STEP_ID": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_TASKS_PER_NODE": "1",
    "SLURM_TASKS_PER_NODE": "1", "SLURM_DISTRIBUTION": "cyclic",
}
# the batch script of that job: SLURM_PROCID and SLURM_NTASKS (the job's), no step
_STEP_ONLY = ("SLURM_DISTRIBUTION", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_SRUN_COMM_HOST", "SLURM_SRUN_COMM_PORT",
              "SLURM_STEPID", "SLURM_STEP_ID", "SLURM_STEP_LAUNCHER_PORT", "SLURM_STEP_NODELIST",
              "SLURM_STEP_NUM_NODES", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_UMASK")
SBATCH = {**{k: v for k, v in SRUN.items() if k not in _STEP_ONLY}, "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
          "SLURM_GTIDS": "0"}
# salloc -n 4: a shell on the submitting machine (no task), or (LaunchParameters=use_interactive_step) the
# interactive step on the first node, whose one task keeps the job's SLURM_NTASKS (srun --preserve-env)
SALLOC = {
    "SLURM_CLUSTER_NAME": "cluster", "SLURM_JOBID": "4242", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "interactive",
    "SLURM_JOB_NODELIST": "gpu03", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_PARTITION": "debug",
    "SLURM_JOB_CPUS_PER_NODE": "4", "SLURM_NNODES": "1", "SLURM_NODELIST": "gpu03", "SLURM_NPROCS": "4",
    "SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "4", "SLURM_SUBMIT_DIR": "/home/u/frontier",
    "SLURM_SUBMIT_HOST": "login1",
}
INTERACTIVE = {**SRUN_ONE, "SLURM_STEP_ID": "4294967290", "SLURM_STEPID": "4294967290", "SLURM_NTASKS": "4",
               "SLURM_NPROCS": "4", "SLURM_TASKS_PER_NODE": "4", "SLURM_JOB_CPUS_PER_NODE": "4"}
# deepspeed --num_gpus 2 (deepspeed.launcher.launch): rank 1, started with --local_rank=1
DEEPSPEED = {"CUDA_VISIBLE_DEVICES": "0,1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2",
             "CROSS_RANK": "0", "CROSS_SIZE": "1", "LOCAL_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
# deepspeed --hostfile (2 nodes x 4 slots): rank 6, on the second node
DEEPSPEED_NODE_1 = {**DEEPSPEED, "CUDA_VISIBLE_DEVICES": "0,1,2,3", "MASTER_ADDR": "worker-0", "WORLD_SIZE": "8",
                    "CROSS_RANK": "1", "CROSS_SIZE": "2", "LOCAL_SIZE": "4", "RANK": "6", "LOCAL_RANK": "2"}
# mpirun -np 4 (Open MPI 4.1, one node): rank 2
MPIRUN = {
    "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_NODE_RANK": "2", "OMPI_UNIVERSE_SIZE": "4",
    "OMPI_MCA_ess_base_jobid": "2361917441", "OMPI_MCA_ess_base_vpid": "2", "OMPI_MCA_orte_ess_num_procs": "4",
    "OMPI_FIRST_RANKS": "0", "OMPI_APP_CTX_NUM_PROCS": "4", "OMPI_COMMAND": "frontier", "OMPI_ARGV": "train",
    "PMIX_RANK": "2", "PMIX_NAMESPACE": "2361917441",
}
# mpirun -np 8 on the 2 nodes of a batch script (its daemons started by srun, one task per node): rank 5
MPIRUN_IN_SLURM = {
    **SBATCH, "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
    "SLURM_PROCID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
    "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)", **MPIRUN, "OMPI_COMM_WORLD_RANK": "5",
    "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_NODE_RANK": "1",
    "OMPI_UNIVERSE_SIZE": "8", "PMIX_RANK": "5",
}


def _expect(launcher, rank, world, local, local_world=None, node=None, addr=None, port=None, job=None, step=False):
    return LauncherEnv(launcher, rank, world, local, local_world, node, addr, port, job, step)


# (environment, what is read, whether an outer launcher started this process as one of its ranks)
ROWS = {
    "none": ({}, _expect(None, 0, 1, 0), False),
    # what a one-process run leaves its children (RANK / WORLD_SIZE for DeepSpeed, no MASTER_ADDR)
    "one-process-leftovers": ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, _expect(None, 0, 1, 0), False),
    "torchrun": (TORCHRUN, _expect("torchrun", 1, 2, 1, 2, 0, "127.0.0.1", 29517), True),
    "torchrun-node-1": (TORCHRUN_NODE_1, _expect("torchrun", 5, 8, 1, 4, 1, "gpu03", 29500), True),
    # srun -N 2 --ntasks-per-node 1 torchrun --nproc-per-node 4 ...: the inner launcher's rank
    "torchrun-in-srun": ({**SRUN_NODE_1, "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2",
                          "SLURM_STEP_TASKS_PER_NODE": "1(x2)", **TORCHRUN_NODE_1},
                         _expect("torchrun", 5, 8, 1, 4, 1, "gpu03", 29500, "4242", True), True),
    "deepspeed": (DEEPSPEED, _expect("deepspeed", 1, 2, 1, 2, 0, "127.0.0.1", 29500), True),
    "deepspeed-node-1": (DEEPSPEED_NODE_1, _expect("deepspeed", 6, 8, 2, 4, 1, "worker-0", 29500), True),
    # an older DeepSpeed (no CROSS_RANK / LOCAL_SIZE), or any launcher with torch's env:// variables
    "torch-env": ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
                  _expect("env", 3, 4, 3, None, None, "h", 29500), True),
    "srun": (SRUN, _expect("srun", 1, 2, 1, 2, 0, job="4242", step=True), True),
    "srun-node-1": (SRUN_NODE_1, _expect("srun", 3, 4, 1, 2, 1, job="4242", step=True), True),
    # one task: the job's one process, which may start its node's ranks itself
    "srun-one-task": (SRUN_ONE, _expect("srun", 0, 1, 0, 1, 0, job="4242", step=True), False),
    "sbatch-script": (SBATCH, _expect(None, 0, 1, 0, job="4242"), False),
    # before Slurm 20.11 the batch script's step id (SLURM_BATCH_SCRIPT) could show
    "sbatch-script-old-slurm": ({**SBATCH, "SLURM_STEP_ID": "4294967294"}, _expect(None, 0, 1, 0, job="4242"), False),
    "salloc-shell": (SALLOC, _expect(None, 0, 1, 0, job="4242"), False),
    "salloc-interactive-step": (INTERACTIVE, _expect(None, 0, 1, 0, job="4242"), False),
    "mpirun": (MPIRUN, _expect("mpirun", 2, 4, 2, 4), True),
    "mpirun-in-slurm": (MPIRUN_IN_SLURM, _expect("mpirun", 5, 8, 1, 4, job="4242", step=True), True),
}
# fmt: on


@pytest.mark.parametrize(("env", "expected", "started"), ROWS.values(), ids=ROWS.keys())
def test_each_launcher_is_read_by_one_set_of_rules(env: dict[str, str], expected: LauncherEnv, started: bool) -> None:
    got = read_launcher_env(env)
    assert got == expected
    assert got.started_as_rank is started
    assert got.in_slurm_job is (expected.slurm_job_id is not None)
    assert ranks_on_this_node(99, env) == (99 if expected.local_world_size is None else expected.local_world_size)


def test_the_default_is_this_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in VARIABLES:
        monkeypatch.delenv(key, raising=False)
    for key, value in SRUN_NODE_1.items():
        monkeypatch.setenv(key, value)
    assert read_launcher_env() == ROWS["srun-node-1"][1]


def _with(base: dict[str, str], **changes: str) -> dict[str, str]:
    return {**base, **changes}


# (environment, the variable named, what the message says was expected)
MALFORMED = {
    "rank-not-a-number": (_with(TORCHRUN, RANK="1x"), "RANK", "an integer >= 0"),
    "rank-negative": (_with(TORCHRUN, RANK="-1"), "RANK", "an integer >= 0"),
    "rank-empty": (_with(TORCHRUN, RANK=""), "RANK", "an integer >= 0"),
    "rank-unicode-digit": (_with(TORCHRUN, RANK="٣"), "RANK", "an integer >= 0"),  # str.isdigit() takes it
    "rank-blank-padded": (_with(TORCHRUN, RANK=" 1"), "RANK", "an integer >= 0"),  # int() takes it
    "rank-signed": (_with(TORCHRUN, RANK="+1"), "RANK", "an integer >= 0"),
    "rank-not-below-world-size": (_with(TORCHRUN, RANK="2"), "RANK", "outside [0, WORLD_SIZE=2)"),
    "world-size-zero": (_with(TORCHRUN, WORLD_SIZE="0", RANK="0"), "WORLD_SIZE", "an integer >= 1"),
    "local-rank-past-the-node": (_with(TORCHRUN, LOCAL_RANK="2"), "LOCAL_RANK", "outside [0, LOCAL_WORLD_SIZE=2)"),
    "more-on-the-node-than-in-all": (_with(TORCHRUN, LOCAL_WORLD_SIZE="3"), "LOCAL_WORLD_SIZE", "more than WORLD_SIZE=2"),
    "node-rank": (_with(TORCHRUN_NODE_1, GROUP_RANK="node1"), "GROUP_RANK", "an integer >= 0"),
    "port-too-large": (_with(TORCHRUN, MASTER_PORT="70000"), "MASTER_PORT", "an integer in [1, 65535]"),
    "port-a-name": (_with(TORCHRUN, MASTER_PORT="http"), "MASTER_PORT", "an integer in [1, 65535]"),
    "port-of-a-plain-process": ({"MASTER_PORT": "0"}, "MASTER_PORT", "an integer in [1, 65535]"),
    "address-empty": (_with(TORCHRUN, MASTER_ADDR=""), "MASTER_ADDR", "is empty"),
    "deepspeed-local-size": (_with(DEEPSPEED, LOCAL_SIZE="two"), "LOCAL_SIZE", "an integer >= 1"),
    "deepspeed-node": (_with(DEEPSPEED, CROSS_RANK="-1"), "CROSS_RANK", "an integer >= 0"),
    "srun-rank-past-the-tasks": (_with(SRUN, SLURM_PROCID="2"), "SLURM_PROCID", "outside [0, SLURM_NTASKS=2)"),
    "srun-tasks-empty": (_with(SRUN, SLURM_NTASKS=""), "SLURM_NTASKS", "an integer >= 1"),
    "srun-local-id": (_with(SRUN_NODE_1, SLURM_LOCALID="2"), "SLURM_LOCALID", "outside [0, SLURM_STEP_TASKS_PER_NODE=2)"),
    "srun-node-id": (_with(SRUN_NODE_1, SLURM_NODEID="x"), "SLURM_NODEID", "an integer >= 0"),
    "srun-tasks-per-node": (_with(SRUN, SLURM_STEP_TASKS_PER_NODE="2(x"), "SLURM_STEP_TASKS_PER_NODE", "per-node task list"),
    "mpirun-size": (_with(MPIRUN, OMPI_COMM_WORLD_SIZE="four"), "OMPI_COMM_WORLD_SIZE", "an integer >= 1"),
    "mpirun-local-size": (_with(MPIRUN, OMPI_COMM_WORLD_LOCAL_SIZE="٤"), "OMPI_COMM_WORLD_LOCAL_SIZE", "an integer >= 1"),
    "huge": (_with(TORCHRUN, RANK="9" * 5000), "RANK", "an integer >= 0"),  # past what int() converts
}  # fmt: skip


@pytest.mark.parametrize(("env", "key", "expected"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_variable_is_refused_by_name(env: dict[str, str], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_launcher_env(env)
    value = env[key] if len(env[key]) <= 40 else env[key][:37] + "..."
    message = str(caught.value)
    assert message.startswith(f"environment: {key}={value!r} "), message
    assert expected in message and "\n" not in message, message


def test_only_the_launchers_own_variables_are_read() -> None:
    # a batch script's job-wide SLURM variables, and a one-process run's leftovers, describe no rank here
    assert read_launcher_env(_with(SBATCH, SLURM_NTASKS="2(x2)")).launcher is None
    assert read_launcher_env({"RANK": "x", "WORLD_SIZE": "1"}).launcher is None
    # torchrun inside srun: srun's variables are not this rank's
    assert read_launcher_env({**_with(SRUN, SLURM_PROCID="9"), **TORCHRUN}).rank == 1


@pytest.mark.parametrize("row", ["srun-node-1", "mpirun", "torchrun", "deepspeed", "none", "sbatch-script"])
def test_what_init_distributed_writes_reads_back_the_same(row: str) -> None:
    """After the rendezvous and the rank are exported (init_distributed), MASTER_ADDR puts torch's variables
    first for srun and mpirun: a later read in that process (the micro-batch budget) must find the same rank."""
    env, expected, _ = ROWS[row]
    env = dict(env)
    if expected.world_size > 1:
        assert export_rendezvous(env) == []
    export_rank(expected, env)
    again = read_launcher_env(env)
    assert (again.rank, again.world_size, again.local_rank, again.local_world_size) == (
        expected.rank, expected.world_size, expected.local_rank, expected.local_world_size
    )  # fmt: skip
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} == {
        "RANK": str(expected.rank), "WORLD_SIZE": str(expected.world_size), "LOCAL_RANK": str(expected.local_rank)
    }  # fmt: skip


def test_the_rendezvous_a_scheduler_implies() -> None:
    env = dict(SRUN_NODE_1)
    assert export_rendezvous(env) == []
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu03", "24242")  # the job's first host, its id's port
    env = dict(MPIRUN)
    export_rendezvous(env)
    assert env["MASTER_ADDR"] == "127.0.0.1" and 20000 <= int(env["MASTER_PORT"]) < 60000
    several_nodes = {k: v for k, v in MPIRUN_IN_SLURM.items() if not k.startswith("SLURM")}
    assert export_rendezvous(several_nodes) == ["MASTER_ADDR", "MASTER_PORT"]  # no guess: init_distributed says so


def test_nproc_per_node_auto_is_one_rule_for_the_node_and_the_submitting_side() -> None:
    def never() -> int:
        raise AssertionError("GPUs counted for a fixed nproc_per_node")

    assert resolve_nproc_per_node(3, gpus=never) == 3
    assert resolve_nproc_per_node("auto", gpus=lambda: 8) == 8
    assert resolve_nproc_per_node("auto", gpus=lambda: 0) == 1


def test_the_reader_imports_neither_torch_nor_deepspeed() -> None:
    """The Snakefile imports it at parse time."""
    code = ("import sys, frontier.train.launch.environment; "
            "print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_nothing_else_reads_the_launchers_variables() -> None:
    """Only environment.py names them (as a quoted variable name) in frontier/ and the workflow."""
    names = "|".join(re.escape(v) for v in VARIABLES)
    literal = re.compile(rf"[\"']({names}|PMI_[A-Z_]+|OMPI_[A-Z_]+)[\"']")
    sources = [*(REPO / "frontier").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"), REPO / "Snakefile"]
    found = [
        f"{path.relative_to(REPO)}: {m.group(0)}"
        for path in sources
        if path.name != "environment.py"
        for m in literal.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not found, found
