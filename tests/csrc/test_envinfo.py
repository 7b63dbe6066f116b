"""frontier env: versions, extension ops and GPU peaks."""

from __future__ import annotations

import torch

from frontier.envinfo import collect_env, format_env, gpu_peaks


def test_collect_env_reports_versions_and_extension_ops() -> None:
    info = collect_env()
    assert info["torch"] == torch.__version__
    assert info["extension"]["loaded"] and info["extension"]["cpu_ops"]
    if torch.version.cuda is None:
        assert not info["extension"]["cuda_ops"]  # a CPU torch builds no CUDA kernels
    assert len(info["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    text = format_env(info)
    assert torch.__version__ in text and "CPU ops: yes" in text


def test_format_env_shows_gpus_with_their_peaks() -> None:
    info = collect_env()
    info["gpus"] = [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "capability": "9.0",
            "memory_gib": 79.1,
            "sms": 132,
            "peaks": gpu_peaks("NVIDIA H100 80GB HBM3"),
        }
    ]
    assert "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB, 132 SMs; peak 989.4 bf16 TFLOP/s, 3.35 TB/s)" in format_env(info)


def test_gpu_peaks_prefer_the_most_specific_name() -> None:
    assert gpu_peaks("NVIDIA H100 PCIe")["memory_tbps"] == 2.0
    assert gpu_peaks("NVIDIA GH200 480GB")["memory_tbps"] == 4.0
    assert gpu_peaks("NVIDIA H200")["memory_tbps"] == 4.8
    assert gpu_peaks("Some Unknown GPU") is None


def test_a_gpu_without_bf16_tensor_cores_shows_its_fp16_peak() -> None:
    info = collect_env()
    name = "Tesla V100-SXM2-32GB"
    info["gpus"] = [{"name": name, "capability": "7.0", "memory_gib": 31.7, "sms": 80, "peaks": gpu_peaks(name)}]
    assert "80 SMs; peak 125 fp16 TFLOP/s, 0.9 TB/s)" in format_env(info)
