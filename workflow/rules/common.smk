# Helpers shared by the rules files (no rules here). Params are validated once, at parse time,
# so a bad params.yaml stops the workflow with one clear line before any job starts.
import sys

from frontier.config import build_params, to_dict
from frontier.errors import ConfigError
from frontier.pipeline import STAGES, command, fingerprint, params_file_for, typed_cli_config

config.update(typed_cli_config(config))  # --config values arrive as strings
try:
    PARAMS = to_dict(build_params(config, "params.yaml"))
except ConfigError as _exc:
    sys.stderr.write(f"snakemake: error: {_exc}\n")
    sys.exit(2)
# What every job runs with: params.yaml itself, or (with --config) the validated config written out.
PARAMS_PATH = params_file_for(config)


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
    """The rule's shell line: the command, the cores as --workers for parallel stages, and its log."""
    workers = " --workers {threads}" if STAGES[name].parallel else ""
    return "{params.cmd}" + workers + " 2>&1 | tee {log}"


def stage_threads(name):
    """All the cores Snakemake may use for multithreaded and parallel stages, 1 for the others."""
    stage = STAGES[name]
    cores = workflow.cores if isinstance(workflow.cores, int) else 1  # None under --report / --dry-run
    return max(1, cores) if stage.parallel or stage.multithreaded else 1


def stage_fingerprint(name):
    """A hash of the params sections the stage reads: changing one reruns that stage and what follows."""
    return fingerprint(PARAMS, STAGES[name])
