# Helpers shared by the rules files (no rules here). Params are validated once, at parse time,
# so a bad params.yaml stops the workflow with one clear line before any job starts.
import copy
import os
import sys
from collections.abc import Callable

from snakemake.exceptions import WorkflowError
from snakemake.utils import available_cpu_count, update_config

from frontier.config import build_params, read_params_data, to_dict
from frontier.errors import ConfigError
from frontier.pipeline import PARAMS_FILE, STAGES, command, fingerprint, params_file_for, typed_cli_config
from frontier.train.launch.environment import read_launcher_env, resolve_nproc_per_node


def _read_config() -> tuple[dict, dict | None, str]:
    """params.yaml, then each --configfile, then --config, every file read as plain data by Frontier's
    strict loader (Snakemake's own, behind a `configfile:` directive, would evaluate YTE templates).
    Returns the merged config, params.yaml's own content (None when absent) and where they came from."""
    settings = workflow.config_settings
    files = [str(f) for f in settings.configfiles]
    base = read_params_data(PARAMS_FILE) if os.path.exists(PARAMS_FILE) or not files else None
    data = copy.deepcopy(base or {})
    for path in files:
        update_config(data, read_params_data(path))
    update_config(data, typed_cli_config(dict(settings.config)))
    extra = [f"--configfile {f}" for f in files] + (["--config"] if settings.config else [])
    return data, base, PARAMS_FILE + (f" with {' and '.join(extra)}" if extra else "")


try:
    _data, _base, _source = _read_config()
    PARAMS = to_dict(build_params(_data, _source))
    config.clear()
    config.update(_data)
    # What every job runs with: params.yaml itself, or (with --config) the validated config written out.
    PARAMS_PATH = params_file_for(config, _base)
except ConfigError as _exc:
    sys.stderr.write(f"snakemake: error: {_exc}\n")
    sys.exit(2)


def stage_inputs(name):
    """The paths a stage reads."""
    return list(STAGES[name].deps)


def stage_outputs(name):
    """The stage's outputs as Snakemake directory() targets, tagged for `snakemake --report` where asked."""
    stage = STAGES[name]
    if stage.report:
        return [report(directory(p), patterns=list(stage.report), category=name) for p in stage.outs]
    return [directory(p) for p in stage.outs]


def stage_cmd(name):
    """The stage's command line (dvc.yaml's, with the params file this run validated)."""
    return command(STAGES[name], PARAMS_PATH)


def stage_shell(name):
    """The rule's shell line: the rank launcher (srun in a SLURM job), the command, the cores as --workers
    for parallel stages, and its log."""
    workers = " --workers {threads}" if STAGES[name].parallel else ""
    return "{params.launcher}{params.cmd}" + workers + " 2>&1 | tee {log}"


# ---- Cluster jobs -------------------------------------------------------------------------------------
# Executor plugins read a rule's resources: (snakemake-executor-plugin-slurm turns nodes, tasks,
# cpus_per_task, mem_mb, runtime and gres into sbatch options). Train and finetune ask for what params'
# launch: section describes; a profile's set-resources (workflow/profiles/slurm) can override any of it.

# Stages that start their ranks (frontier/pipeline.py): one job = launch.nnodes x ranks per node ranks.
LAUNCHED = tuple(name for name, stage in STAGES.items() if stage.launches)
# What the one-process stages ask a cluster for: their data fits a few GB (streamed or memory-mapped).
SMALL_JOB = {"mem_mb": 4096, "runtime": 60}
# CPUs a cluster job's process gets when params do not say (launch.threads_per_rank = 0): --cores describes
# the submitting machine, not a compute node, and under an executor it is unset (or "unlimited").
CLUSTER_CPUS = 4


def job_ranks_per_node(launch: dict) -> int:
    """launch.nproc_per_node for a cluster job: "auto" is every GPU the job asks for on a node, else 1.

    The node itself resolves "auto" by the same rule from the CUDA devices it sees; here, on the submitting
    machine, the job has no GPUs yet, so they are the ones it asks for.
    """
    return resolve_nproc_per_node(launch["nproc_per_node"], gpus=lambda: launch["gpus_per_node"])


def cpus_per_rank(launch: dict) -> int:
    """CPUs (and threads) of one rank in a cluster job."""
    return launch["threads_per_rank"] or CLUSTER_CPUS


def in_slurm() -> bool:
    """Is this Snakemake placing a job on SLURM, or running inside one that the SLURM executor placed?

    Three processes must agree: the submitting one (executor slurm), the job's (slurm-jobstep, which starts
    the rule's Snakemake without srun when the job has an `mpi` resource) and the rule's own (local executor
    in remote mode, inside the allocation), which writes the srun prefix into the shell command.
    """
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm":
        return True
    return workflow.remote_exec and read_launcher_env().in_slurm_job


def _srun_ranks(launch: dict) -> bool:
    """Ranks started by srun as the job's tasks (several of them, inside SLURM)? The plugin refuses an MPI
    job of one task, and one rank needs no launcher."""
    return launch["nnodes"] * job_ranks_per_node(launch) > 1 and in_slurm()


def stage_resources(name: str) -> dict:
    """The rule's resources: (plain values, or callables Snakemake evaluates per job once the executor is known)."""
    if name not in LAUNCHED:
        return dict(SMALL_JOB)
    launch = PARAMS["launch"]
    nodes, per_node = launch["nnodes"], job_ranks_per_node(launch)
    resources = {
        "nodes": nodes,
        "cpus_per_task": cpus_per_rank(launch),
        "mem_mb": launch["mem_mb"],  # per node, as sbatch --mem
        "runtime": launch["runtime_min"],
        # The MPI-job convention of snakemake-executor-plugin-slurm: with an `mpi` resource the job's
        # Snakemake runs the rule directly in the batch script (no srun -n1 around it) and the rule's shell
        # starts the tasks with `{mpi} -n {tasks}`. None (no such resource) everywhere else, so the same
        # rule runs locally as it always did.
        "mpi": lambda wildcards: "srun" if _srun_ranks(launch) else None,
    }
    # One task per rank. Several ranks on each of several nodes: tasks per node, since a total (`tasks`)
    # lets SLURM pack the ranks unevenly, and a rank per GPU needs the same count on every node.
    if nodes > 1 and per_node > 1:
        resources["tasks_per_node"] = per_node
    else:
        resources["tasks"] = nodes * per_node
    if launch["gpus_per_node"]:
        resources["gres"] = f"gpu:{launch['gpus_per_node']}"  # --gres counts per node; --gpus the whole job
        resources["tasks_per_gpu"] = 0  # else the plugin passes `tasks` as --ntasks-per-gpu (all ranks per GPU)
    return resources


def rank_launcher(wildcards: object, resources: object) -> str:
    """The rule's launcher prefix: `{mpi} -n <ranks>` when it has an `mpi` resource (an MPI-style SLURM job,
    or one a profile's set-resources asked for), else "". Ranks: `tasks`, or nodes x `tasks_per_node`.

    A params function of resources: Snakemake leaves it out of the params rerun trigger, so a model trained
    locally is not retrained because the next run goes through SLURM.
    """
    if "mpi" not in resources.keys():
        return ""
    per_node = resources.get("tasks_per_node")
    tasks = resources.get("tasks") or resources.get("nodes", 1) * per_node
    prefix = f"{resources.mpi} -n {tasks}"
    if os.path.basename(str(resources.mpi).split()[0]) == "srun":
        if per_node:
            prefix += f" --ntasks-per-node={per_node}"
        # srun (since Slurm 22.05) no longer inherits the job's --cpus-per-task: a rank would get one CPU.
        # --kill-on-bad-exit: a failed rank ends the step instead of leaving the others in a collective.
        if resources.get("cpus_per_task"):
            prefix += f" --cpus-per-task={resources.cpus_per_task}"
        prefix += " --kill-on-bad-exit=1"
    return prefix + " "


def _local_cores() -> int:
    """--cores of a local run; this machine's CPUs when it is unlimited (-j unlimited is sys.maxsize)."""
    try:
        cores = workflow.cores
    except WorkflowError:  # no --cores: --report, --list-rules and the like
        return 1
    if not isinstance(cores, int):
        return 1
    return available_cpu_count() if cores >= sys.maxsize else max(1, cores)


def stage_threads(name: str) -> int | Callable[..., int]:
    """Threads of a stage's job: 1 for single-threaded stages; for multithreaded and parallel ones, all the
    cores of a local run, or on a cluster what the job asks for (evaluated per job, once the executor is known).

    Snakemake exports the threads as OMP_NUM_THREADS. In a SLURM job whose ranks srun starts, each rank
    inherits it, so it is one rank's CPUs; where the stage starts its node's ranks itself, it shares them.
    """
    stage = STAGES[name]
    if not (stage.parallel or stage.multithreaded):
        return 1

    def threads(wildcards: object) -> int:
        if not (workflow.non_local_exec or workflow.remote_exec):
            return _local_cores()
        if name not in LAUNCHED:
            return CLUSTER_CPUS
        launch = PARAMS["launch"]
        return cpus_per_rank(launch) * (1 if _srun_ranks(launch) else job_ranks_per_node(launch))

    return threads


def stage_fingerprint(name):
    """A hash of the params sections the stage reads: changing one reruns that stage and what follows."""
    return fingerprint(PARAMS, STAGES[name])
