# Helpers shared by the rules files (no rules here). Params are validated once, at parse time,
# so a bad params.yaml stops the workflow with one clear line before any job starts.
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import available_cpu_count

from frontier.config import build_params, read_params_data, to_dict
from frontier.errors import ConfigError
from frontier.params_files import mark_outdated
from frontier.pipeline import PARAMS_FILE, STAGES, command, params_file_for, stage_deps, typed_cli_config
from frontier.provenance import outdated_outputs
from frontier.train.launch.environment import read_launcher_env, resolve_nproc_per_node
from frontier.utils.stale_lock import clear_stale_lock, mark_executor, write_note


def _read_config() -> tuple[dict, dict | None, "Origins"]:
    """params.yaml, then each --configfile, then --config, every file read as plain data by Frontier's
    strict loader (Snakemake's own, behind a `configfile:` directive, would evaluate YTE templates).
    Returns the merged config, params.yaml's own content (None when absent) and which layer supplied each
    value, so a refusal names the one to fix (a typo in --config is --config's, not params.yaml's)."""
    from frontier.config.load import Origins

    settings = workflow.config_settings
    files = [str(f) for f in settings.configfiles]
    base = read_params_data(PARAMS_FILE) if os.path.exists(PARAMS_FILE) or not files else None
    data: dict = {}
    origins = Origins(PARAMS_FILE)
    if base is not None:
        origins.merge(data, PARAMS_FILE, base)
    for path in files:  # Snakemake hands them over absolute: named as the user would, below the workdir
        rel = os.path.relpath(path)
        origins.merge(data, path if rel.startswith("..") else rel, read_params_data(path))
    origins.merge(data, "--config", typed_cli_config(dict(settings.config)))
    return data, base, origins


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

# Jobs run `frontier ...`: the one installed beside the Python running this Snakemake goes first on the PATH
# they inherit, however Snakemake was started (`bash run.sh snakemake`, .venv/bin/snakemake without activating
# the venv, a cluster job's `python -m snakemake`), so a job runs the Frontier this Snakefile imported.
_BIN = os.path.dirname(sys.executable)
if os.access(os.path.join(_BIN, "frontier"), os.X_OK) and os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


def stage_inputs(name: str) -> list[str]:
    """The paths a stage reads, and its stamp: newer than its output when that was not built from this run's params.

    Snakemake's metadata says what Snakemake last ran for an output, not what is there now: after `dvc checkout`,
    a copy, or a run under another --config, it would take a result built from other params as up to date. Each
    output records the params its stage read (params.resolved.yaml, compared by frontier.provenance), and that
    record decides, whichever tool made or restored the output: where it differs, the stamp is dated now, so
    Snakemake reruns the stage and what follows it (frontier.params_files.mark_outdated says why not its params
    trigger). A Snakemake that runs one job (a cluster job's, a subprocess) leaves the stamps as the one that
    scheduled it dated them.
    """
    scheduling = not (workflow.remote_exec or workflow.subprocess_exec)
    why = []
    for out, differences in (outdated_outputs(STAGES[name], PARAMS) if scheduling else {}).items():
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        sys.stderr.write(f"snakemake: {out} was not built from this run's params ({'; '.join(differences[:3])}{more}): "
                         f"{name} is out of date, and what follows it\n")  # fmt: skip
        why += [f"{out}: {d}" for d in differences]
    try:
        stamp = mark_outdated(name, why, touch=scheduling)
    except (ConfigError, OSError) as exc:
        sys.stderr.write(f"snakemake: error: {exc}\n")
        sys.exit(2)
    return [*stage_deps(STAGES[name], PARAMS), str(stamp)]


def stage_outputs(name):
    """The stage's outputs as Snakemake directory() targets, tagged for `snakemake --report` where asked."""
    stage = STAGES[name]
    if stage.report:
        return [report(directory(p), patterns=list(stage.report), category=name) for p in stage.outs]
    return [directory(p) for p in stage.outs]


def stage_cmd(name: str) -> str:
    """The stage's command as dvc.yaml has it: in Snakemake's params trigger, so a stage whose command line
    changes runs again (the params file a run passes, stage_run's, does not count)."""
    return command(STAGES[name])


def stage_run(name: str) -> Callable[..., str]:
    """What the job runs: the command with the params file this run validated (params.yaml, or with --config
    the one under .snakemake/frontier-params, named by its content's hash).

    A params function of the job's output, which Snakemake leaves out of its params rerun trigger: that file's
    name changes with any --config, and would rerun every stage. Whether a stage's params changed is what its
    output records (stage_inputs).
    """
    line = command(STAGES[name], PARAMS_PATH)

    def run(wildcards: object, output: object) -> str:
        return line

    return run


def stage_shell(name):
    """The rule's shell line: the rank launcher (srun in a SLURM job), the command, the cores as --workers
    for parallel stages, and its log."""
    workers = " --workers {threads}" if STAGES[name].parallel else ""
    return "{params.launcher}{params.run}" + workers + " 2>&1 | tee {log}"


# ---- Cluster jobs -------------------------------------------------------------------------------------
# Executor plugins read a rule's resources: (snakemake-executor-plugin-slurm turns nodes, tasks,
# cpus_per_task, mem_mb, runtime, gres and slurm_partition into sbatch options). Every value comes from
# params' launch: section (train and finetune: its top-level keys; every other stage: launch.cluster), so a
# small cluster is described in params.yaml, not by editing rules; a profile's set-resources can still
# override any of it. None of it changes what a stage makes (frontier/pipeline.py's LAUNCH_LAYOUT).

# Stages that start their ranks (frontier/pipeline.py): one job = launch.nnodes x ranks per node ranks.
LAUNCHED = tuple(name for name, stage in STAGES.items() if stage.launches)


def _partition(partition: str | None) -> dict:
    """The slurm_partition resource where params name one; none where they do not, so the plugin submits to
    the cluster's default partition (or to a profile's default-resources slurm_partition)."""
    return {} if partition is None else {"slurm_partition": partition}


def job_ranks_per_node(launch: dict) -> int:
    """launch.nproc_per_node for a cluster job: "auto" is every GPU the job asks for on a node, else 1.

    The node itself resolves "auto" by the same rule from the CUDA devices it sees; here, on the submitting
    machine, the job has no GPUs yet, so they are the ones it asks for.
    """
    return resolve_nproc_per_node(launch["nproc_per_node"], gpus=lambda: launch["gpus_per_node"])


def cpus_per_rank(launch: dict) -> int:
    """CPUs (and threads) of one rank in a cluster job: threads_per_rank, else launch.cluster.cpus (--cores
    describes the submitting machine, not a compute node, and under an executor it is unset or "unlimited")."""
    return launch["threads_per_rank"] or launch["cluster"]["cpus"]


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
    launch = PARAMS["launch"]
    if name not in LAUNCHED:
        job = launch["cluster"]  # one task; a single-threaded stage would leave any further CPU idle
        cpus = job["cpus"] if STAGES[name].parallel or STAGES[name].multithreaded else 1
        return {
            "cpus_per_task": cpus,
            "mem_mb": job["mem_mb"],
            "runtime": job["runtime_min"],
            **_partition(job["partition"]),
        }
    nodes, per_node = launch["nnodes"], job_ranks_per_node(launch)
    resources = {
        "nodes": nodes,
        "cpus_per_task": cpus_per_rank(launch),
        "mem_mb": launch["mem_mb"],  # per node, as sbatch --mem
        "runtime": launch["runtime_min"],
        **_partition(launch["partition"]),
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
            return PARAMS["launch"]["cluster"]["cpus"]
        launch = PARAMS["launch"]
        return cpus_per_rank(launch) * (1 if _srun_ranks(launch) else job_ranks_per_node(launch))

    return threads


def _slurm_config() -> dict[str, str]:
    """`scontrol show config` as key -> value; {} where scontrol cannot answer."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.partition("=") for line in shown.stdout.splitlines())
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


def _on_start(log: str) -> None:
    """When a run starts (its executor known; before its first job): for a SLURM run, note that its jobs
    outlive it, and read job states the one way the cluster offers.

    snakemake-executor-plugin-slurm asks sacct whenever the command exists; a cluster without an accounting
    database answers "Slurm accounting storage is disabled", and the plugin would wait forever for jobs
    that finished long ago. There squeue answers instead: slurmctld shows a finished job for MinJobAge
    seconds (SLURM's default 300), longer than the plugin's longest wait between checks (180 s). Where the
    cluster has accounting, the plugin's own choice stands. The plugin reads the setting at every status
    check, and none has happened yet. Snakemake keeps one onstart hook per workflow: this is it.
    """
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or workflow.remote_exec:
        return
    if _RUN_NOTE is not None:
        mark_executor(_RUN_NOTE, "slurm")
    settings = workflow.executor_settings
    slurm = _slurm_config()
    if slurm.get("AccountingStorageType") != "accounting_storage/none" or not hasattr(settings, "status_command"):
        return
    settings.status_command = "squeue"
    sys.stderr.write("snakemake: no SLURM accounting here (AccountingStorageType=accounting_storage/none): "
                     "job states come from squeue\n")  # fmt: skip
    age = slurm.get("MinJobAge", "").split()
    if age and age[0].isdigit() and int(age[0]) < 180:
        sys.stderr.write(f"snakemake: warning: no SLURM accounting here, and slurmctld forgets a finished job "
                         f"after MinJobAge={age[0]} s: a job that ends between two status checks (up to 180 s "
                         "apart) may never be seen to end; ask for MinJobAge >= 300 (SLURM's default)\n")  # fmt: skip


# A run killed outright leaves Snakemake's lock behind; the submitting Snakemake removes it when the run
# that took it is gone and nothing it started still works here (frontier/utils/stale_lock.py), else says
# what still runs. Jobs' own Snakemake processes (remote, without a lock) take no part.
_RUN_NOTE = None
if not (workflow.remote_exec or workflow.subprocess_exec):
    try:
        _lock_news = clear_stale_lock(Path(".snakemake").resolve())
        if _lock_news:
            sys.stderr.write(f"snakemake: {_lock_news}\n")
        _RUN_NOTE = write_note(Path(".snakemake").resolve())
    except OSError as _exc:  # a directory this user cannot write: Snakemake says so itself when it matters
        sys.stderr.write(f"snakemake: warning: cannot keep a note of this run in .snakemake ({_exc})\n")
    workflow.onstart(_on_start)
