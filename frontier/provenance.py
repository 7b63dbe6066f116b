"""What produced an output: code, lock, libraries, hardware, host and command, recorded beside it.

Every stage calls ``record_stage(params, out_tmp, "<stage>")`` inside its atomic output directory, which
writes ``params.resolved.yaml`` (the params sections frontier/pipeline.py declares for the stage) and
``provenance.json``. The record is collected when the stage runs, on the machine that runs it (train
collects it when training starts), so a report rendered elsewhere shows the training machine. Environment facts build on ``torch.utils.collect_env`` (the same probe PyTorch's
bug reports use): OS, libc, compilers, CUDA runtime, driver, cuDNN, GPU models, CPU.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from frontier.config import Params, dump_resolved
from frontier.pipeline import ALL_STAGES, Stage
from frontier.utils.atomic import write_json

PROVENANCE_FILE = "provenance.json"
RECORDED_PARAMS = "params.resolved.yaml"  # what dump_resolved writes beside a stage's outputs
PACKAGES = ("torch", "transformers", "deepspeed", "triton", "peft", "tokenizers", "safetensors", "numpy")
_REPO = Path(__file__).resolve().parents[1]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out


def git_state(repo: Path = _REPO) -> dict[str, Any]:
    """Commit of the checkout Frontier runs from and whether its tracked or unignored files differ."""
    commit = (_git(repo, "rev-parse", "HEAD") or "").strip()
    if not commit:
        return {"commit": None, "dirty": None, "note": f"{repo} is not a git checkout"}
    status = _git(repo, "status", "--porcelain", "--untracked-files=all")
    changed = [line[3:] for line in (status or "").splitlines() if line.strip()]  # "XY path"
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:50]}


@functools.lru_cache(maxsize=1)
def _torch_env() -> dict[str, Any]:
    """torch.utils.collect_env's probe, once per process (it runs a few subprocesses, ~1 s)."""
    from torch.utils import collect_env

    env = collect_env.get_env_info()._asdict()
    keep = ("os", "libc_version", "gcc_version", "cuda_runtime_version", "nvidia_driver_version", "nvidia_gpu_models")
    facts = {key: env.get(key) for key in keep}
    facts["cpu_model"] = _cpu_model(env.get("cpu_info") or "")
    return facts


def _cpu_model(lscpu: str) -> str:
    for line in lscpu.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except (ImportError, OSError):
        return None


def gpu_list() -> list[dict[str, Any]]:
    """Name, compute capability, memory and SM count of each visible CUDA device (none on a CPU build)."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "sms": props.multi_processor_count,
            }
        )
    return gpus


def _cuda() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch_cuda": torch.version.cuda, "gpus": gpu_list()}
    if not info["gpus"]:
        return info
    info["cudnn"] = torch.backends.cudnn.version()
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except (AttributeError, RuntimeError):
        info["nccl"] = None
    return info


def _command(argv: list[str]) -> str:
    """The command line, its program named as typed (``frontier``), not by its install path."""
    if not argv:
        return ""
    program = Path(argv[0]).name
    program = "python -m frontier" if program == "__main__.py" else program
    return shlex.join([program, *argv[1:]])


def collect_provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The record written beside a stage's outputs (JSON-friendly)."""
    from frontier.utils.lock import lock_status

    torch_env = _torch_env()
    return {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(sys.argv if argv is None else argv),
        "hostname": socket.gethostname(),
        "git": git_state(),
        "lock": lock_status(),
        "python": platform.python_version(),
        "frontier": _version("frontier"),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": {
            **_cuda(),
            "nvcc": torch_env["cuda_runtime_version"],  # collect_env's "CUDA runtime" is the toolkit's nvcc
            "driver": torch_env["nvidia_driver_version"],
        },
        "hardware": {
            "cpu": torch_env["cpu_model"],
            "cpus": os.cpu_count(),
            "memory_gib": _memory_gib(),
            "gpu_models": torch_env["nvidia_gpu_models"],
        },
        "os": torch_env["os"],
        "libc": torch_env["libc_version"],
        "gcc": torch_env["gcc_version"],
    }


def write_provenance(directory: str | Path, record: dict[str, Any] | None = None) -> Path:
    """Write ``provenance.json`` (``record``, or one collected now) into `directory`."""
    path = Path(directory) / PROVENANCE_FILE
    write_json(path, record if record is not None else collect_provenance())
    return path


def record_stage(params: Params, directory: str | Path, stage: str, provenance: dict[str, Any] | None = None) -> None:
    """Beside a stage's outputs: the resolved parameters it depends on and what produced it.

    The sections are the ones `stage` declares in frontier/pipeline.py (what DVC tracks for it), so the
    record cannot drift from the declaration; a dotted key ("launch.nnodes") records its whole section.
    Stages sharing a subcommand (evaluate, evaluate_finetuned) share their params: the entry function
    names the first.
    """
    sections = list(dict.fromkeys(key.split(".")[0] for key in ALL_STAGES[stage].params))
    dump_resolved(params, directory, sections)
    write_provenance(directory, provenance)


def read_provenance(directory: str | Path) -> dict[str, Any] | None:
    """A stage output's provenance record, or None when it has none (an older output)."""
    import json

    path = Path(directory) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_recorded_params(directory: str | Path) -> dict[str, Any] | None:
    """The params a stage output records (``params.resolved.yaml``), or None when it has no readable record.

    Read by the strict loader, as data: the directory may have been restored or copied from anywhere.
    """
    from frontier.utils.strict_yaml import MAX_PARAMS_BYTES, YamlRefused, load_plain

    path = Path(directory) / RECORDED_PARAMS
    try:
        if path.stat().st_size > MAX_PARAMS_BYTES:
            return None
        data = load_plain(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YamlRefused):
        return None
    return data if isinstance(data, dict) else None


def _plain(value: Any) -> Any:
    """`value` as JSON sees it (tuples as lists, other objects as text), as a record read back holds it."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _differences(key: str, recorded: Any, current: Any) -> list[str]:
    """Leaf by leaf, where `recorded` and `current` differ ("train.max_steps: 20 there, 24 now")."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        keys = dict.fromkeys([*recorded, *current])
        return [d for k in keys for d in _differences(f"{key}.{k}", recorded.get(k), current.get(k))]
    # Compared as JSON text: NaN equals NaN there, as a value read back from the record must.
    there, now = json.dumps(recorded, sort_keys=True), json.dumps(current, sort_keys=True)
    return [] if there == now else [f"{key}: {there[:60]} there, {now[:60]} now"]


def params_differences(stage: Stage, recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys `stage` declares whose recorded value is not the current one (both resolved params as dicts).

    Only the declared keys count: a record holds a dotted key's whole section ("launch.nnodes": launch:), whose
    other keys change where a stage runs, not what it makes.
    """
    return [
        d
        for key in stage.params
        for d in _differences(key, _plain(_lookup(recorded, key)), _plain(_lookup(current, key)))
    ]


def outdated_outputs(stage: Stage, current: dict[str, Any]) -> dict[str, list[str]]:
    """`stage`'s outputs on disk that were not built from `current` (resolved params as a dict), each with why.

    What an output records decides, whoever built or restored it (Snakemake, `dvc checkout`, a copy): every
    stage that reads params records them beside its outputs (record_stage), so one without a readable record
    was not made by the stage here and counts as outdated. A stage that reads no params (merge) has nothing
    to compare; missing outputs are the workflow tool's business.
    """
    if not stage.params:
        return {}
    outdated: dict[str, list[str]] = {}
    for out in stage.outs:
        if not os.path.isdir(out):
            continue
        recorded = read_recorded_params(out)
        if recorded is None:
            outdated[out] = [f"no readable {RECORDED_PARAMS}"]
        elif differences := params_differences(stage, recorded, current):
            outdated[out] = differences
    return outdated
