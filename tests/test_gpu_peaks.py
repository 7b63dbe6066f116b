"""The one GPU peak table (frontier.utils.gpu_peaks): real device names find their row, and its callers use it."""

from __future__ import annotations

import sys
from unittest import mock

import pytest
import torch

from frontier.utils.gpu_peaks import GPU_PEAKS, lookup_gpu, peak_tflops

# What torch.cuda.get_device_name() / `nvidia-smi --query-gpu=name` report on these cards -> the row.
REAL_NAMES = {
    "NVIDIA B200": "B200",
    "NVIDIA H100 80GB HBM3": "H100",  # SXM5
    "NVIDIA H100": "H100",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200",
    "NVIDIA H200 141GB HBM3e": "H200",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",  # 96 GB HBM3; the 480 GB is the Grace CPU's LPDDR5X
    "NVIDIA GH200 144G HBM3e": "GH200 HBM3e",
    "NVIDIA GH200 144GB HBM3e": "GH200 HBM3e",
    "NVIDIA H800": "H800",
    "NVIDIA H800 80GB HBM3": "H800",
    "NVIDIA H800 PCIe": "H800 PCIe",
    "NVIDIA A100-SXM4-40GB": "A100",
    "NVIDIA A100-SXM4-80GB": "A100 80GB",
    "NVIDIA A100-SXM-80GB": "A100 80GB",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe",
    "NVIDIA A100 80GB PCIe": "A100 80GB PCIe",
    "NVIDIA A100-PCIE-80GB": "A100 80GB PCIe",
    "NVIDIA A10": "A10",
    "NVIDIA L40S": "L40S",
    "NVIDIA L40": "L40",
    "NVIDIA L4": "L4",
    "NVIDIA GeForce RTX 4090": "RTX 4090",
    "Tesla V100-SXM2-16GB": "V100",
    "Tesla V100-SXM2-32GB": "V100",
    "NVIDIA V100-SXM2-32GB": "V100",
    "Tesla V100-PCIE-16GB": "V100 PCIe",
    "Tesla V100-PCIE-32GB": "V100 PCIe",
    "Tesla V100S-PCIE-32GB": "V100S PCIe",
}

# Names that must find no row: another part whose name contains a listed one as a substring, or an
# unlisted cut-down variant of a listed part (a wrong peak would make a wrong MFU).
NO_ROW = [
    "NVIDIA A10G",  # AWS's part, not the A10
    "NVIDIA H20",
    "NVIDIA GB200",
    "NVIDIA H800 NVL",
    "NVIDIA GeForce RTX 4090 D",
    "NVIDIA A800-SXM4-80GB",
    "NVIDIA GeForce RTX 3090",
    "Some Unknown GPU",
    "",
]


@pytest.mark.parametrize("name", sorted(REAL_NAMES))
def test_every_real_device_name_finds_its_row(name: str) -> None:
    row = lookup_gpu(name)
    assert row is not None and row.key == REAL_NAMES[name]
    assert lookup_gpu(name.upper()) == row == lookup_gpu(name.lower())  # case does not matter


@pytest.mark.parametrize("name", NO_ROW)
def test_other_parts_find_no_row(name: str) -> None:
    assert lookup_gpu(name) is None and peak_tflops(name, "bf16") is None


def test_every_row_is_reached_by_a_real_name_and_by_its_own_key() -> None:
    keys = [row.key for row in GPU_PEAKS]
    assert len(set(keys)) == len(keys)
    assert set(REAL_NAMES.values()) == set(keys)
    for row in GPU_PEAKS:
        assert lookup_gpu(f"NVIDIA {row.key}") is row


def test_datasheet_figures() -> None:
    # spot checks of the dense figures the table's comments cite
    h100 = lookup_gpu("NVIDIA H100 80GB HBM3")
    assert h100 is not None and (h100.bf16_tflops, h100.fp32_tflops, h100.memory_tbps) == (989.4, 67.0, 3.35)
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H100 NVL", "fp16") == 835.5
    assert peak_tflops("NVIDIA H200", "bf16") == peak_tflops("NVIDIA H100 80GB HBM3", "bf16")
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert peak_tflops("NVIDIA B200", "bf16") == 2250.0
    assert peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 tensor cores
    assert peak_tflops("Tesla V100-SXM2-16GB", "fp16") == 125.0
    assert peak_tflops("NVIDIA H100 PCIe", "fp8") is None  # not a training precision here
    for row in GPU_PEAKS:  # tensor cores beat the CUDA cores, fp16 and bf16 agree where both exist
        assert row.fp16_tflops > row.fp32_tflops > 0 and row.memory_tbps > 0
        assert row.bf16_tflops in (None, row.fp16_tflops)


def test_the_mfu_monitor_uses_the_table() -> None:
    from frontier.train.monitor.metrics import device_peak_flops

    cuda = torch.device("cuda", 0)
    with mock.patch.object(torch.cuda, "get_device_name", return_value="NVIDIA H100 NVL"):
        assert device_peak_flops(cuda, "bf16") == pytest.approx(835.5e12)
        assert device_peak_flops(cuda, "fp32") == pytest.approx(60e12)
    with mock.patch.object(torch.cuda, "get_device_name", return_value="NVIDIA A10G"):
        assert device_peak_flops(cuda, "bf16") is None
    assert device_peak_flops(torch.device("cpu"), "bf16") is None


def test_frontier_env_uses_the_table() -> None:
    from frontier.envinfo import gpu_peaks

    peaks = gpu_peaks("NVIDIA GH200 144G HBM3e")
    assert peaks is not None and peaks["bf16_tflops"] == 989.4 and peaks["memory_tbps"] == 4.9
    assert gpu_peaks("NVIDIA A10G") is None


def test_the_table_imports_no_torch() -> None:
    import subprocess

    code = "import sys, frontier.utils.gpu_peaks; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
