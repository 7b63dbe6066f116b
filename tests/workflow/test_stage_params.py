"""Each stage declares exactly the params sections it reads (what DVC tracks and Snakemake fingerprints).

The whole pipeline runs in-process on a tiny config while every read of a top-level params field is
recorded; whole-config dumps (params.resolved.yaml, the report's config listing) are not reads of a
dependency and are paused. A stage reading an undeclared section would not rerun when it changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import frontier.config
import frontier.config.load
from frontier.config import Params, load_params
from frontier.config.launch import LaunchConfig
from frontier.pipeline import STAGES

pytestmark = pytest.mark.slow

TINY = [
    "prepare.max_docs=120", "tokenizer.vocab_size=384", "model.hidden_size=32", "model.num_layers=2",
    "model.num_heads=2", "model.max_seq_len=64", "train.max_steps=6", "train.micro_batch_size=4", "train.eval_every=3",
    "train.eval_batches=2", "train.log_every=2", "schedule.warmup_steps=2", "evaluate.max_tokens=4096",
    "evaluate.batch_size=4", "finetune.max_steps=3", "finetune.micro_batch_size=2", "engine.monitor.system_every_s=0",
    "evaluate.passk.max_problems=1", "evaluate.passk.n=1", "evaluate.passk.k=[1]",
    "evaluate.passk.sampling.max_new_tokens=8", "preference.max_steps=2", "preference.micro_batch_size=2",
    "preference.demo_train_pairs=8", "preference.demo_heldout_pairs=2", "preference.demo_max_prompt_chars=80",
]  # fmt: skip
FIELDS = {f.name for f in dataclasses.fields(Params)}


@contextlib.contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    reads: set[str] = set()
    paused = [0]

    def getattribute(self: Params, name: str) -> object:
        if not paused[0] and name in FIELDS:
            reads.add(name)
        return object.__getattribute__(self, name)

    original = frontier.config.to_dict

    def to_dict(obj: object) -> dict:
        paused[0] += 1
        try:
            return original(obj)
        finally:
            paused[0] -= 1

    with monkeypatch.context() as m:
        m.setattr(Params, "__getattribute__", getattribute)
        m.setattr(frontier.config, "to_dict", to_dict)
        m.setattr(frontier.config.load, "to_dict", to_dict)  # dump_resolved's own
        yield reads


def test_every_stage_declares_the_sections_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from frontier.data.pack import tokenize
    from frontier.data.prepare import prepare
    from frontier.data.tokenizer import train_tokenizer
    from frontier.eval.evaluate import evaluate
    from frontier.finetune.merge import merge
    from frontier.finetune.preference import preference
    from frontier.finetune.preference_demo import build_preference_pairs
    from frontier.finetune.run import finetune
    from frontier.finetune.sft_data import build_sft_pairs
    from frontier.report.build import build_report
    from frontier.train.launch.launch import should_launch
    from frontier.train.run import train

    p = load_params(None, TINY)
    d = tmp_path
    runs = {
        "prepare": lambda: prepare(p, d / "prepared"),
        "tokenizer": lambda: train_tokenizer(p, d / "prepared", d / "tokenizer"),
        "tokenize": lambda: tokenize(p, d / "prepared", d / "tokenizer", d / "tokens", workers=1),
        # the train and finetune stages (frontier.cli) first decide from launch: whether to start ranks
        "train": lambda: should_launch(p.launch) or train(p, d / "tokens", d / "tokenizer", d / "train", d / "ckpt"),
        "evaluate": lambda: evaluate(p, d / "train" / "model", d / "tokens", d / "eval", d / "prepared"),
        "sft_data": lambda: build_sft_pairs(p, d / "prepared", d / "sft"),
        "finetune": lambda: (
            should_launch(p.launch) or finetune(p, d / "train" / "model", d / "sft", d / "finetune", d / "ckpt_ft")
        ),
        "merge": lambda: merge(d / "finetune", d / "merged"),
        "evaluate_finetuned": lambda: evaluate(p, d / "merged", d / "tokens", d / "eval_ft", d / "prepared"),
        "preference_data": lambda: build_preference_pairs(p, d / "sft", d / "pref_data"),
        "preference": lambda: (
            should_launch(p.launch) or preference(p, d / "merged", d / "pref_data", d / "pref", d / "ckpt_pref")
        ),
        "merge_preference": lambda: merge(d / "pref", d / "merged_pref"),
        "evaluate_preference": lambda: evaluate(p, d / "merged_pref", d / "tokens", d / "eval_pref", d / "prepared"),
        "report": lambda: build_report(
            p, d / "train", d / "eval", d / "report", d / "finetune", d / "eval_ft", d / "pref", d / "eval_pref"
        ),
    }
    assert set(runs) == set(STAGES), "every stage of the pipeline is exercised"
    for name, run in runs.items():
        with recording(monkeypatch) as reads:
            run()
        declared = {key.split(".")[0] for key in STAGES[name].params}  # reads are recorded per section
        assert reads <= declared, f"{name} reads {sorted(reads - declared)} without declaring them"
        assert declared <= reads, f"{name} declares {sorted(declared - reads)} but never reads them"


# ---- What each rule asks a cluster for (Snakemake resources:, from params' launch: section) ----------------

REPO = Path(__file__).resolve().parents[2]
GPU_NODES = {"gpus_per_node": 8, "nnodes": 2, "master_port": 29500, "threads_per_rank": 6, "mem_mb": 480000,
             "runtime_min": 2880}  # fmt: skip
GPU_NODES_JOB = {"nodes": 2, "tasks_per_node": 8, "tasks": None, "cpus_per_task": 6, "gres": "gpu:8",
                 "tasks_per_gpu": 0, "mem_mb": 480000, "runtime": 2880}  # fmt: skip


def _dry_run(tmp_path: Path, *args: str) -> dict[str, dict[str, object]]:
    """`snakemake -n -p finetune` in a fresh directory: per rule, its threads, resources and shell command."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "finetune", "-n", "-p", "--directory", str(work), "--snakefile",
         str(REPO / "Snakefile"), "--configfile", str(work / "params.yaml"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs: dict[str, dict[str, object]] = {}
    rule = None
    for line in proc.stdout.splitlines():
        if line.startswith("rule ") and line.endswith(":"):
            rule = line[5:-1]
            jobs[rule] = {"threads": 1, "resources": {}}
        elif rule and line.strip().startswith("threads: "):
            jobs[rule]["threads"] = int(line.split(":", 1)[1])
        elif rule and line.strip().startswith("resources: "):
            pairs = (item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
            jobs[rule]["resources"] = {k: int(v) if v.isdigit() else v for k, v in pairs}
        elif rule and line.startswith("Shell command: "):
            jobs[rule]["shell"] = line[len("Shell command: ") :]
    assert {"prepare", "tokenize", "train", "finetune"} <= set(jobs), proc.stdout[-3000:]
    return jobs


@pytest.mark.parametrize(
    ("launch", "expected"),
    [
        # the defaults: one CPU rank, what a small node has (2 CPUs, 4 GB); no GPU request, no partition (the
        # cluster's default)
        ({}, {"nodes": 1, "tasks": 1, "cpus_per_task": 2, "mem_mb": 4096, "runtime": 120, "slurm_partition": None}),
        # nproc auto on GPU nodes: one rank per GPU on each node (tasks per node: a total could be packed
        # unevenly); gres counts per node; tasks_per_gpu 0 keeps the plugin from passing --ntasks-per-gpu
        (GPU_NODES, GPU_NODES_JOB),
        # CPU ranks on two nodes
        ({"nproc_per_node": 3, "nnodes": 2, "master_port": 29500}, {"nodes": 2, "tasks_per_node": 3, "tasks": None}),
        # one rank on each of two nodes: two tasks on two nodes cannot be uneven (and the plugin refuses
        # tasks_per_node 1 for an MPI job)
        ({"nnodes": 2, "master_port": 29500}, {"nodes": 2, "tasks": 2, "tasks_per_node": None}),
        # fewer ranks than GPUs: the GPUs are still asked for
        ({"nproc_per_node": 2, "gpus_per_node": 4}, {"nodes": 1, "tasks": 2, "gres": "gpu:4"}),
        # ranks from an outer launcher: one task per GPU the job asks for
        ({"launcher": "external", "gpus_per_node": 4}, {"nodes": 1, "tasks": 4, "gres": "gpu:4"}),
    ],
    ids=["defaults", "auto-gpus-2-nodes", "cpu-ranks-2-nodes", "1-rank-2-nodes", "fewer-ranks-than-gpus", "external"],
)
def test_train_and_finetune_ask_for_what_launch_describes(tmp_path: Path, launch: dict, expected: dict) -> None:
    config = ("--config", f"launch={yaml.safe_dump(launch, default_flow_style=True).strip()}") if launch else ()
    jobs = _dry_run(tmp_path, "--cores", "2", *config)
    for name in ("train", "finetune"):
        resources = jobs[name]["resources"]
        assert {k: resources.get(k) for k in expected} == expected, (name, resources)
        if "gres" not in expected:
            assert "gres" not in resources and "gpu" not in resources, resources
        # Locally nothing launches the ranks from outside: no `mpi` resource, the command as DVC runs it.
        assert "mpi" not in resources, resources
        assert str(jobs[name]["shell"]).startswith(f"frontier {name} --params "), jobs[name]["shell"]
        assert jobs[name]["threads"] == 2  # every core of the local run (the stage divides them among its ranks)
    for name in ("prepare", "tokenize", "sft_data"):
        resources = jobs[name]["resources"]
        # launch.cluster's defaults: 2 CPUs where the stage uses threads, 1 where it cannot, 4 GB, an hour
        assert resources["mem_mb"] == 4096 and resources["runtime"] == 60, (name, resources)
        assert resources["cpus_per_task"] == (2 if name == "tokenize" else 1), (name, resources)
        assert not {"tasks", "nodes", "mpi", "gres", "slurm_partition"} & set(resources), (name, resources)


def test_every_rule_asks_for_what_params_say(tmp_path: Path) -> None:
    """CPUs, memory, time and partition of every rule come from launch: (train and finetune its top-level keys,
    the others launch.cluster). (A dry run's threads are a local run's: tests/workflow/test_slurm.py checks that
    a SLURM job's are the CPUs it asks for.)"""
    launch = ("launch={partition: gpu, mem_mb: 2000, runtime_min: 30, threads_per_rank: 0, "
              "cluster: {cpus: 3, mem_mb: 1000, runtime_min: 7, partition: 'cpu,short'}}")  # fmt: skip
    jobs = _dry_run(tmp_path, "--executor", "slurm", "--jobs", "1", "--config", launch)
    for name in ("train", "finetune"):
        resources = jobs[name]["resources"]
        expected = {"slurm_partition": "gpu", "mem_mb": 2000, "runtime": 30, "cpus_per_task": 3}
        assert {k: resources.get(k) for k in expected} == expected, (name, resources)  # 3: cluster.cpus a rank
    for name in ("prepare", "tokenizer", "tokenize", "sft_data"):
        resources = jobs[name]["resources"]
        cpus = 3 if name == "tokenize" else 1
        expected = {"slurm_partition": "cpu,short", "mem_mb": 1000, "runtime": 7, "cpus_per_task": cpus}
        assert {k: resources.get(k) for k in expected} == expected, (name, resources)


def test_what_a_job_asks_for_is_no_stage_dependency() -> None:
    """Cluster resources change where a stage runs, not what it makes: a stage declaring one would be rerun (a
    model retrained) by DVC and Snakemake when only the job's size changed."""
    asks = {f"launch.{f.name}" for f in dataclasses.fields(LaunchConfig)} - {
        "launch.launcher", "launch.nproc_per_node", "launch.nnodes"}  # fmt: skip
    assert {"launch.cluster", "launch.mem_mb", "launch.partition", "launch.threads_per_rank"} <= asks
    for stage in STAGES.values():
        assert "launch" not in stage.params, stage.name  # the whole section would include the job's size
        assert not {p for p in stage.params if p in asks or p.startswith("launch.cluster.")}, stage.name


@pytest.mark.parametrize(
    ("override", "key"),
    [("launch.partition=a b", "launch.partition"), ("launch.cluster.partition=", "launch.cluster.partition"),
     ("launch.cluster.cpus=0", "launch.cluster.cpus"), ("launch.cluster.mem_mb=0", "launch.cluster.mem_mb"),
     ("launch.cluster.runtime_min=0", "launch.cluster.runtime_min")],
)  # fmt: skip
def test_bad_cluster_resources_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(frontier.config.ConfigError) as refused:
        load_params(REPO / "params.yaml", [override])
    assert f" {key}: " in str(refused.value), refused.value


def test_an_mpi_resource_starts_the_ranks_as_the_plugin_documents(tmp_path: Path) -> None:
    """snakemake-executor-plugin-slurm's MPI convention: resources tasks + mpi, the shell starts `{mpi} -n {tasks}`."""
    launch = "launch={gpus_per_node: 8, nnodes: 2, master_port: 29500, threads_per_rank: 6}"
    jobs = _dry_run(tmp_path, "--cores", "2", "--config", launch, "--set-resources", "train:mpi=srun",
                    "finetune:mpi='mpiexec --bind-to none'")  # fmt: skip
    # srun gets the rank's CPUs (it does not inherit the job's --cpus-per-task) and ends the step when a rank fails
    assert str(jobs["train"]["shell"]).startswith("srun -n 16 --ntasks-per-node=8 --cpus-per-task=6 "
                                                  "--kill-on-bad-exit=1 frontier train --params "), jobs["train"]  # fmt: skip
    assert str(jobs["finetune"]["shell"]).startswith("mpiexec --bind-to none -n 16 frontier finetune --params ")
    assert str(jobs["prepare"]["shell"]).startswith("frontier prepare ")  # no mpi resource: no launcher


def test_unlimited_cores_are_this_machines_cpus(tmp_path: Path) -> None:
    """`--cores` beyond reason (-j unlimited is sys.maxsize) must not become OMP_NUM_THREADS or --workers."""
    jobs = _dry_run(tmp_path, "--cores", str(sys.maxsize))
    cpus = len(os.sched_getaffinity(0))
    assert jobs["train"]["threads"] == jobs["tokenize"]["threads"] == cpus, jobs
    assert f"--workers {cpus} " in str(jobs["tokenize"]["shell"])
    assert jobs["prepare"]["threads"] == 1
