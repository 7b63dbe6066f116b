"""Launcher environments, stop signals and the exit code of an interrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from frontier.errors import ConfigError
from frontier.train.launch.distributed import _read_env, init_distributed
from frontier.train.launch.environment import VARIABLES
from frontier.train.launch.signals import EXIT_INTERRUPTED, StopRequest, TrainingInterrupted
from tests.train.helpers import REPO


@pytest.fixture
def clean_env(monkeypatch):
    for key in VARIABLES:  # every variable the launcher's environment is read from
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1, 0)),
        ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h"}, (5, 8, 1)),  # deepspeed / torchrun
        # RANK / WORLD_SIZE without MASTER_ADDR: what a one-process run leaves its children, not a launcher
        ({"RANK": "0", "WORLD_SIZE": "1", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}, (1, 2, 1)),
        ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3"}, (3, 4, 3)),
        ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}, (9, 16, 1)),
        # an sbatch script of a 16-task job is not one of its tasks (srun starts those)
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0"}, (0, 1, 0)),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_STEP_ID": "4294967294"}, (0, 1, 0)),
        (
            {"RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
            (2, 4, 2),
        ),  # launcher wins
    ],
)
def test_rank_from_the_launcher_environment(clean_env, env, expected):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert _read_env() == expected


@pytest.mark.parametrize(
    "env", [{"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}]
)
def test_bad_launcher_environment_is_a_config_error(clean_env, env):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match="environment: RANK"):
        _read_env()


def test_single_process_group_on_the_cpu():
    info = init_distributed()
    assert (info.rank, info.world_size, info.backend, info.device.type) == (0, 1, "gloo", "cpu")
    assert init_distributed() == info  # idempotent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signals_become_a_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.name == signal.Signals(sig).name
    assert signal.getsignal(sig) is before


_HUP = (
    "import os, signal, sys\n"
    "from frontier.train.launch.signals import StopRequest\n"
    # each case sets SIGHUP's disposition itself: pytest may run under nohup (SIG_IGN inherited)
    "signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1] == 'nohup' else signal.SIG_DFL)\n"
    "with StopRequest() as stop:\n"
    "    os.kill(os.getpid(), signal.SIGHUP)\n"
    "    print(stop.name or 'not requested', flush=True)\n"
    "print('restored' if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN) else 'leaked')\n"
)


@pytest.mark.parametrize(("how", "expected"), [("terminal", "SIGHUP\nrestored"), ("nohup", "not requested\nrestored")])
def test_sighup_is_a_stop_request_unless_ignored_by_nohup(how, expected):
    """In a process of its own: before SIGHUP was handled, its default action killed the process."""
    done = subprocess.run([sys.executable, "-c", _HUP, how], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == expected


def test_second_ctrl_c_interrupts_immediately():
    with StopRequest():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_is_a_frontier_error_with_its_own_exit_code():
    assert TrainingInterrupted("x").exit_code == EXIT_INTERRUPTED == 3
