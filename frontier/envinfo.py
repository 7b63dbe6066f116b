"""What this machine offers Frontier: library versions, the extension's ops, the GPU (`frontier env`).

Builds on the provenance record (frontier.provenance, itself on torch.utils.collect_env): commit, lock,
versions, OS, CPU, CUDA driver and cuDNN, plus what only `frontier env` needs (the extension's ops, GPU
peaks). Collecting never builds or imports heavy optional packages: versions come from package
metadata, and the extension is only looked for (not built just in time).

It sits at the top of the package, beside frontier.provenance, because it reads both that and the
optimizer's ops (frontier.optim.ops): frontier.utils is the bottom and imports neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from frontier.utils.gpu_peaks import lookup_gpu


def gpu_peaks(name: str) -> dict[str, Any] | None:
    """Datasheet peaks (frontier.utils.gpu_peaks) for a GPU name as a JSON-friendly dict, or None."""
    row = lookup_gpu(name)
    return dataclasses.asdict(row) if row else None


def _extension_info() -> dict[str, Any]:
    from frontier.ext import ExtensionError, load_extension
    from frontier.optim import ops

    try:
        how = load_extension(build=False)
    except ExtensionError as exc:
        return {"loaded": False, "error": str(exc), "cpu_ops": False, "cuda_ops": False}
    return {"loaded": True, "how": how, "cpu_ops": ops.has_kernel("cpu"), "cuda_ops": ops.has_kernel("cuda")}


def collect_env() -> dict[str, Any]:
    """Versions, extension ops, GPUs and the provenance record, as a JSON-friendly dict."""
    import torch

    from frontier.provenance import collect_provenance

    record = collect_provenance()
    packages = record["packages"]
    return {
        "python": record["python"],
        "platform": record["os"],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "triton": packages["triton"],
        "deepspeed": packages["deepspeed"],
        "transformers": packages["transformers"],
        "extension": _extension_info(),
        "gpus": [{**gpu, "peaks": gpu_peaks(gpu["name"])} for gpu in record["cuda"]["gpus"]],
        "provenance": record,
    }


def format_env(info: dict[str, Any]) -> str:
    """A short human-readable report of collect_env()'s dict."""
    ext = info["extension"]
    if ext["loaded"]:
        ext_line = f"loaded ({ext['how']}); CPU ops: {_yes(ext['cpu_ops'])}, CUDA ops: {_yes(ext['cuda_ops'])}"
    else:
        ext_line = f"not loaded: {ext['error']}"
    lines = [
        f"python        {info['python']} ({info['platform']})",
        f"torch         {info['torch']} (CUDA {info['torch_cuda'] or 'none'}, CPU {info['cpu_capability']})",
        f"triton        {info['triton'] or 'not installed'}",
        f"deepspeed     {info['deepspeed'] or 'not installed'}",
        f"transformers  {info['transformers'] or 'not installed'}",
        f"frontier._C   {ext_line}",
    ]
    record = info.get("provenance")
    if record:
        git, lock, hw, cuda = record["git"], record["lock"], record["hardware"], record["cuda"]
        dirty = " (dirty)" if git.get("dirty") else ""
        lines += [
            f"commit        {git.get('commit') or 'unknown'}{dirty}",
            f"lock          {_lock_line(lock)}",
            f"cpu           {hw['cpu']} ({hw['cpus']} cores, {hw['memory_gib']} GiB)",
            f"cuda driver   {cuda.get('driver') or 'none'}; cuDNN {cuda.get('cudnn') or 'none'}",
        ]
    if not info["gpus"]:
        lines.append("gpus          none")
    for i, gpu in enumerate(info["gpus"]):
        peak = _peak_text(gpu["peaks"])
        lines.append(
            f"gpu {i}         {gpu['name']} (sm_{gpu['capability'].replace('.', '')}, {gpu['memory_gib']} GiB, "
            f"{gpu['sms']} SMs{peak})"
        )
    return "\n".join(lines)


def _peak_text(peaks: dict[str, Any] | None) -> str:
    if not peaks:
        return ""
    # a GPU without bf16 tensor cores (V100) shows its fp16 peak instead
    precision = "bf16" if peaks["bf16_tflops"] else "fp16"
    return f"; peak {peaks[precision + '_tflops']:g} {precision} TFLOP/s, {peaks['memory_tbps']:g} TB/s"


def _lock_line(lock: dict[str, Any]) -> str:
    if not lock.get("file"):
        return "none: this environment was not installed from a lock (bash run.sh installs one)"
    state = "matches" if lock["matches"] else f"DIFFERS ({'; '.join(lock['differences'][:3])})"
    return f"{lock['file']} sha256 {lock['sha256'][:16]}, {state}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
