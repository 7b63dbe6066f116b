"""What SLURM and Open MPI imply about the rendezvous, and the ranks on this node, derived without a launcher."""

from __future__ import annotations

import re

import pytest

from frontier.train.launch.environment import (
    first_host,
    ranks_on_this_node,
    rendezvous_from_scheduler,
    slurm_tasks_per_node,
)


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("gpu[03-05,9],cpu1", "gpu03"), ("node1,node2", "node1"), ("a-b[001-004]", "a-b001"), ("x[7]", "x7"),
     ("solo", "solo"), ("rack1-[10-12]", "rack1-10")],
)  # fmt: skip
def test_first_host_of_a_slurm_nodelist(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


def test_slurm_tasks_agree_on_address_and_port() -> None:
    tasks = [{"SLURM_PROCID": str(r), "SLURM_JOB_NODELIST": "gpu[03-05]", "SLURM_JOB_ID": "4242"} for r in range(3)]
    found = [rendezvous_from_scheduler(env) for env in tasks]
    assert found == [{"MASTER_ADDR": "gpu03", "MASTER_PORT": "24242"}] * 3


def test_what_the_environment_sets_wins_and_multinode_mpi_needs_it() -> None:
    env = {"SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "7", "MASTER_PORT": "1234"}
    assert rendezvous_from_scheduler(env) == {"MASTER_ADDR": "n1"}
    multi_node = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    assert rendezvous_from_scheduler(multi_node) == {}  # no safe guess: init_distributed says what to export
    assert rendezvous_from_scheduler({}) == {}


@pytest.mark.parametrize(
    ("spec", "counts"), [("4", [4]), ("2(x3)", [2, 2, 2]), ("2(x3),1", [2, 2, 2, 1]), ("1,3(x2),2", [1, 3, 3, 2])]
)
def test_slurm_tasks_per_node_expands_the_compressed_form(spec: str, counts: list[int]) -> None:
    assert slurm_tasks_per_node(spec) == counts


_STEP = {"SLURM_PROCID": "3", "SLURM_NTASKS": "7", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2(x3),1",
         "SLURM_LOCALID": "0"}  # fmt: skip
# torchrun inside that step (one agent per node), DeepSpeed's launcher and mpirun: each with its rank variables
# (the local size alone, without them, is no launcher's environment)
_TORCHRUN = {"RANK": "4", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "MASTER_ADDR": "n1", "TORCHELASTIC_RUN_ID": "j"}
_DEEPSPEED = {"RANK": "5", "WORLD_SIZE": "10", "LOCAL_RANK": "0", "MASTER_ADDR": "n1", "CROSS_RANK": "1"}
_MPIRUN = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}


@pytest.mark.parametrize(
    ("env", "here"),
    [
        ({"LOCAL_WORLD_SIZE": "4", **_TORCHRUN, **_STEP}, 4),  # torchrun inside an allocation: its count wins
        ({"LOCAL_SIZE": "5", **_DEEPSPEED}, 5),  # DeepSpeed's own launcher
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3", **_MPIRUN}, 3),
        ({**_STEP, "SLURM_NODEID": "1"}, 2),
        ({**_STEP, "SLURM_NODEID": "3"}, 1),  # the last node holds one task
        ({**_STEP, "SLURM_STEP_ID": "4294967294", "SLURM_NODEID": "3"}, 7),  # an sbatch script is no task
        ({**_STEP, "SLURM_NODEID": "9"}, 7),  # a node index outside the list: assume every rank is here
        ({}, 7),
    ],
)
def test_ranks_on_this_node_reads_the_launcher(env: dict[str, str], here: int) -> None:
    assert ranks_on_this_node(7, env) == here


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOCAL_WORLD_SIZE": "two", **_TORCHRUN}, "LOCAL_WORLD_SIZE='two'"),
        ({"LOCAL_SIZE": "0", **_DEEPSPEED}, "LOCAL_SIZE='0'"),
        ({"LOCAL_SIZE": "+-3", **_DEEPSPEED}, "LOCAL_SIZE='+-3'"),
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2.0", **_MPIRUN}, "OMPI_COMM_WORLD_LOCAL_SIZE='2.0'"),
        ({**_STEP, "SLURM_NODEID": ""}, "SLURM_NODEID=''"),
        ({**_STEP, "SLURM_STEP_TASKS_PER_NODE": "2(x"}, "SLURM_STEP_TASKS_PER_NODE='2(x'"),
        ({**_STEP, "SLURM_STEP_TASKS_PER_NODE": "(x3)"}, "SLURM_STEP_TASKS_PER_NODE='(x3)'"),
        ({**_STEP, "SLURM_NODEID": "-1"}, "SLURM_NODEID='-1'"),
    ],
)
def test_a_malformed_launcher_variable_is_named(env: dict[str, str], named: str) -> None:
    from frontier.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(f"environment: {named}")):
        ranks_on_this_node(7, env)
