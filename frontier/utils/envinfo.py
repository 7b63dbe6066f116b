"""What this machine offers Frontier: library versions, the extension's ops, the GPU (`frontier env`).

Builds on the provenance record (frontier.provenance, itself on torch.utils.collect_env): commit, lock,
versions, OS, CPU, CUDA driver and cuDNN, plus what only `frontier env` needs (the extension's ops, GPU
peaks). Collecting never builds or imports heavy optional packages: versions come from package
metadata, and the extension is only looked for (not built just in time).
"""

from __future__ import annotations

from typing import Any

# Datasheet peaks of common training GPUs (dense bf16 tensor-core TFLOP/s, memory TB/s), matched by
# a substring of torch.cuda.get_device_name(); the most specific names come first.
GPU_PEAKS: list[tuple[str, float, float]] = [
    ("GH200", 989.0, 4.0),  # the 96 GB HBM3 version
    ("H200", 989.0, 4.8),
    ("H100 NVL", 835.0, 3.9),
    ("H100 PCIe", 756.0, 2.0),
    ("H100", 989.0, 3.35),
    ("H800", 989.0, 3.35),
    ("B200", 2250.0, 8.0),
    ("A100-SXM4-80GB", 312.0, 2.039),
    ("A100 80GB PCIe", 312.0, 1.935),
    ("A100", 312.0, 1.555),
    ("L40S", 362.0, 0.864),
    ("L4", 121.0, 0.3),
]


def gpu_peaks(name: str) -> dict[str, float] | None:
    """Datasheet peaks for a GPU name, or None when it is not in GPU_PEAKS."""
    for key, tflops, tbps in GPU_PEAKS:
        if key.lower() in name.lower():
            return {"bf16_tflops": tflops, "memory_tbps": tbps}
    return None


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
        peaks = gpu["peaks"]
        peak = f"; peak {peaks['bf16_tflops']:g} bf16 TFLOP/s, {peaks['memory_tbps']:g} TB/s" if peaks else ""
        lines.append(
            f"gpu {i}         {gpu['name']} (sm_{gpu['capability'].replace('.', '')}, {gpu['memory_gib']} GiB, "
            f"{gpu['sms']} SMs{peak})"
        )
    return "\n".join(lines)


def _lock_line(lock: dict[str, Any]) -> str:
    if not lock.get("file"):
        return "none: this environment was not installed from a lock (bash run.sh installs one)"
    state = "matches" if lock["matches"] else f"DIFFERS ({'; '.join(lock['differences'][:3])})"
    return f"{lock['file']} sha256 {lock['sha256'][:16]}, {state}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
