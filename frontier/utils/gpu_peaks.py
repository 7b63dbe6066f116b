"""Datasheet peaks of NVIDIA training GPUs, and the one rule that finds a device name's row.

Used by the MFU monitor (frontier.train.monitor.metrics) and by ``frontier env`` (frontier.envinfo).
Plain data and string matching, no torch: callers pass the name torch.cuda.get_device_name() or
``nvidia-smi --query-gpu=name`` reports.

Every figure is per device and dense (no 2:4 structured sparsity: datasheets quote sparse tensor
throughput, twice the dense one, and a training step has no structured sparsity). Tensor figures are
with FP32 accumulation, which is what torch's bf16/fp16 matmuls use. ``fp32_tflops`` is the plain
FP32 (CUDA core, non-tensor, non-TF32) peak. Sources, per row family below: NVIDIA's product
datasheets, or the architecture whitepaper where it states the dense figure to a decimal (H100 SXM
bf16: 989.4, where the datasheet rounds the sparse one to 1,979).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class GpuPeaks:
    """One GPU's dense datasheet peaks, per device."""

    key: str  # the words (case-insensitive) every device name of this row contains, e.g. "A100 80GB PCIe"
    bf16_tflops: float | None  # tensor cores, FP32 accumulate; None: the GPU has no bf16 tensor cores
    fp16_tflops: float  # tensor cores, FP32 accumulate
    fp32_tflops: float  # CUDA cores (not TF32)
    memory_tbps: float  # DRAM bandwidth, TB/s

    def tflops(self, precision: Precision | str) -> float | None:
        """The peak for a training precision (fp32 | bf16 | fp16)."""
        return {"fp32": self.fp32_tflops, "bf16": self.bf16_tflops, "fp16": self.fp16_tflops}.get(precision)


GPU_PEAKS: tuple[GpuPeaks, ...] = (
    # Blackwell. NVIDIA Blackwell datasheet, HGX B200 per GPU: FP16/BF16 4.5 PF sparse, FP32 75 TF;
    # DGX B200 datasheet: 64 TB/s HBM3e over 8 GPUs (the later Blackwell datasheet rounds down to 7.7).
    GpuPeaks("B200", 2250.0, 2250.0, 75.0, 8.0),
    # Hopper. H100 whitepaper (SXM5: 989.4 bf16/fp16, 66.9 fp32; PCIe: 756, 51.2) and the H100
    # datasheet (SXM 67 fp32, 3.35 TB/s; PCIe 51 fp32, 2 TB/s; NVL 1,671 sparse = 835.5 dense, 60 fp32,
    # 3.9 TB/s). "NVIDIA H100 80GB HBM3" is the SXM part.
    GpuPeaks("H100", 989.4, 989.4, 67.0, 3.35),
    GpuPeaks("H100 PCIe", 756.0, 756.0, 51.0, 2.0),
    GpuPeaks("H100 NVL", 835.5, 835.5, 60.0, 3.9),
    # H200 datasheet: the H100's compute (SXM: 1,979 sparse, 67 fp32; NVL: 1,671 sparse, 60 fp32) with
    # 141 GB HBM3e at 4.8 TB/s on both.
    GpuPeaks("H200", 989.4, 989.4, 67.0, 4.8),
    GpuPeaks("H200 NVL", 835.5, 835.5, 60.0, 4.8),
    # GH200 datasheet: the H100 SXM's compute; 96 GB HBM3 at 4 TB/s ("NVIDIA GH200 480GB": the
    # 480 GB is the Grace CPU's memory) or 144 GB HBM3e at 4.9 TB/s ("NVIDIA GH200 144G HBM3e").
    GpuPeaks("GH200", 989.4, 989.4, 67.0, 4.0),
    GpuPeaks("GH200 HBM3e", 989.4, 989.4, 67.0, 4.9),
    # H800 datasheets (export variant: FP64 and NVLink cut, tensor and FP32 throughput and memory those
    # of the H100 SXM / PCIe).
    GpuPeaks("H800", 989.4, 989.4, 67.0, 3.35),
    GpuPeaks("H800 PCIe", 756.0, 756.0, 51.0, 2.0),
    # Ampere. A100 datasheet: 312 bf16/fp16 (624 sparse), 19.5 fp32 on every form factor; 1,555 GB/s
    # (40 GB, SXM and PCIe), 2,039 GB/s (80 GB SXM), 1,935 GB/s (80 GB PCIe).
    GpuPeaks("A100", 312.0, 312.0, 19.5, 1.555),
    GpuPeaks("A100 PCIe", 312.0, 312.0, 19.5, 1.555),
    GpuPeaks("A100 80GB", 312.0, 312.0, 19.5, 2.039),
    GpuPeaks("A100 80GB PCIe", 312.0, 312.0, 19.5, 1.935),
    # A10 datasheet: 125 bf16/fp16 (250 sparse), 31.2 fp32, 600 GB/s. (AWS's A10G is another part:
    # "NVIDIA A10G" has no row.)
    GpuPeaks("A10", 125.0, 125.0, 31.2, 0.6),
    # Ada. L40S datasheet: 362.05 bf16/fp16 (733 sparse), 91.6 fp32, 864 GB/s; L40 datasheet: 181.05
    # (362.1 sparse), 90.5 fp32, 864 GB/s; L4 datasheet: 121 (242 sparse), 30.3 fp32, 300 GB/s.
    GpuPeaks("L40S", 362.05, 362.05, 91.6, 0.864),
    GpuPeaks("L40", 181.05, 181.05, 90.5, 0.864),
    GpuPeaks("L4", 121.0, 121.0, 30.3, 0.3),
    # Ada whitepaper, GeForce RTX 4090: 165.2 bf16/fp16 with FP32 accumulate (330.3 with fp16
    # accumulate, which torch does not use), 82.6 fp32, 1,008 GB/s.
    GpuPeaks("RTX 4090", 165.2, 165.2, 82.6, 1.008),
    # Volta. V100 datasheet: SXM2 125 fp16 tensor, 15.7 fp32; PCIe 112, 14; V100S PCIe 130, 16.4;
    # 900 GB/s (V100S: 1,134). No bf16 tensor cores: bf16 has no peak.
    GpuPeaks("V100", None, 125.0, 15.7, 0.9),
    GpuPeaks("V100 PCIe", None, 112.0, 14.0, 0.9),
    GpuPeaks("V100S PCIe", None, 130.0, 16.4, 1.134),
)

# Words that name a cut-down variant: a device name carrying one matches only a row whose key names it
# too, so an unlisted variant ("NVIDIA H800 NVL", "NVIDIA GeForce RTX 4090 D") has no peak instead of
# the full part's.
_VARIANT_WORDS = frozenset({"pcie", "nvl", "d"})


def _words(name: str) -> frozenset[str]:
    # "NVIDIA A100-SXM4-80GB" and "NVIDIA A100 80GB PCIe" both split into words at '-', ' ' and '_'
    return frozenset(re.findall(r"[a-z0-9]+", name.lower()))


def lookup_gpu(name: str) -> GpuPeaks | None:
    """The row of GPU_PEAKS for a device name, or None when no row fits.

    A row fits when every word of its key is a word of the name (so "A10" fits "NVIDIA A10" but not
    "NVIDIA A100-SXM4-40GB" or "NVIDIA A10G", "H200" not "NVIDIA GH200 480GB") and the name has no
    variant word (PCIe, NVL) the key lacks. Of the rows that fit, the one with the most key words wins:
    "NVIDIA A100 80GB PCIe" is the "A100 80GB PCIe" row, not "A100" or "A100 PCIe".
    """
    words = _words(name)
    best: GpuPeaks | None = None
    best_size = 0
    for row in GPU_PEAKS:
        key = _words(row.key)
        if key <= words and (words & _VARIANT_WORDS) <= key and len(key) > best_size:
            best, best_size = row, len(key)
    return best


def peak_tflops(name: str, precision: Precision | str) -> float | None:
    """Datasheet peak TFLOP/s of a device name at a training precision, or None when unknown."""
    row = lookup_gpu(name)
    return row.tflops(precision) if row else None
