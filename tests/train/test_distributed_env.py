"""What SLURM and Open MPI imply about the rendezvous, derived without a launcher."""

from __future__ import annotations

import pytest

from frontier.train.distributed import first_host, rendezvous_from_scheduler


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
