# Helpers shared by the rules files (no rules here). Params are validated once, at parse time,
# so a bad params.yaml stops the workflow with one clear line before any job starts.
import sys

from frontier.config import build_params, to_dict
from frontier.errors import ConfigError
from frontier.pipeline import STAGES, command, fingerprint

try:
    PARAMS = to_dict(build_params(config, "params.yaml"))
except ConfigError as _exc:
    sys.stderr.write(f"snakemake: error: {_exc}\n")
    sys.exit(2)


def stage_inputs(name):
    """The paths a stage reads."""
    return list(STAGES[name].deps)


def stage_outputs(name):
    """The stage's outputs as Snakemake directory() targets."""
    return [directory(p) for p in STAGES[name].outs]


def stage_cmd(name):
    """The stage's command line, shared with dvc.yaml."""
    return command(STAGES[name])


def stage_fingerprint(name):
    """A hash of the params sections the stage reads: changing one reruns that stage and what follows."""
    return fingerprint(PARAMS, STAGES[name])
