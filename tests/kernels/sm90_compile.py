"""Compile every Frontier Triton kernel for a real GPU (sm_90) on a machine without one.

    python tests/kernels/sm90_compile.py [--out report.json]     # TRITON_INTERPRET must be unset

Under Triton's interpreter (the CPU test suite) kernels never meet the GPU compiler, so launch options
it refuses (num_warps=5) or types it rejects (fp64 scalars reaching tl.dot, as Inductor passes Python
floats) pass every CPU test and fail on the first GPU call -- both happened on an H200. Here each op's
public entry point runs forward and backward with impl="triton" on small CPU tensors, with the GPU
launch settings (no interpreter: the launchers pick their CUDA configurations), and every kernel launch
is replaced by ``triton.compile`` of that exact specialisation for sm_90 down to a cubin (Triton ships
ptxas). Float scalars are compiled twice: as fp32 (Triton's own launcher) and as fp64 (Inductor's
wrapper for a triton_op). Nothing is launched, so outputs are garbage and never checked.

Prints one JSON report: {"compiled": [...], "failed": [...], "target": ...}; exit 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("sm90_compile.py: unset TRITON_INTERPRET (this compiles kernels for a GPU)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion")
_PTR = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float64: "*fp64",
    torch.int64: "*i64",
    torch.int32: "*i32",
    torch.int16: "*i16",
    torch.int8: "*i8",
    torch.uint8: "*u8",
    torch.bool: "*i1",
}

compiled: list[dict[str, Any]] = []
failed: list[dict[str, Any]] = []
_seen: set[str] = set()


def _scalar_type(value: Any, float_type: str) -> str:
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return float_type
    raise TypeError(f"unsupported kernel argument {value!r}")


def _compile(fn: JITFunction, args: tuple, kwargs: dict) -> None:
    """Compile this launch's specialisation (fp32 floats, then fp64 floats if it has any)."""
    options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs}
    bound = dict(zip(fn.arg_names, args))
    bound.update(kwargs)
    constexprs: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for param in fn.params:
        value = bound[param.name] if param.name in bound else param.default
        if param.is_constexpr:
            constexprs[param.name] = value
        else:
            values[param.name] = value
    has_float = any(isinstance(v, float) for v in values.values())
    for float_type in ("fp32", "fp64") if has_float else ("fp32",):
        signature: dict[str, str] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                signature[name] = _PTR[value.dtype]
            elif value is None:
                signature[name] = "constexpr"
                constexprs[name] = None
            else:
                signature[name] = _scalar_type(value, float_type)
        for name in constexprs:
            signature[name] = "constexpr"
        entry = {
            "kernel": fn.__name__,
            "floats": float_type if has_float else None,
            "signature": {k: v for k, v in signature.items() if v != "constexpr"},
            "constexprs": {k: repr(v) for k, v in constexprs.items()},
            "options": options,
        }
        key = json.dumps(entry, sort_keys=True)
        if key in _seen:
            continue
        _seen.add(key)
        try:
            kernel = triton.compile(ASTSource(fn, signature, constexprs), target=TARGET, options=dict(options))
            entry["cubin_bytes"] = len(kernel.asm["cubin"])
            compiled.append(entry)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the rest still compile
            entry["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]
            failed.append(entry)


def _run_instead_of_launch(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
    _compile(self, args, dict(kwargs))


def _cases() -> list[tuple[str, Callable[[], None]]]:
    """(name, fn): each runs one op forward and backward through its public entry point, impl="triton"."""
    from frontier.kernels.attention import attention
    from frontier.kernels.cross_entropy import cross_entropy
    from frontier.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
    from frontier.kernels.geglu import geglu
    from frontier.kernels.rms_norm import rms_norm
    from frontier.kernels.rope import rope
    from frontier.kernels.swiglu import swiglu

    def leaf(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape).to(dtype).requires_grad_()

    def backward(out: Any) -> None:
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward([o for o in outs], [torch.ones_like(o) for o in outs])

    def attention_case(dim: int, dtype: torch.dtype, docs: bool, hq: int = 4, hkv: int = 2) -> Callable[[], None]:
        def run() -> None:
            q, k, v = (
                leaf(1, hq, 256, dim, dtype=dtype),
                leaf(1, hkv, 256, dim, dtype=dtype),
                leaf(1, hkv, 256, dim, dtype=dtype),
            )
            doc_ids = torch.arange(256).div(100, rounding_mode="floor")[None] if docs else None
            backward(attention(q, k, v, causal=True, doc_ids=doc_ids, impl="triton"))

        return run

    def rope_case(hq: int, hkv: int, dim: int) -> Callable[[], None]:
        def run() -> None:
            q, k = leaf(2, hq, 64, dim), leaf(2, hkv, 64, dim)
            angles = torch.randn(1, 64, dim // 2)
            cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
            backward(rope(q, k, cos.bfloat16(), sin.bfloat16(), impl="triton"))

        return run

    def rms_case(hidden: int, dtype: torch.dtype) -> Callable[[], None]:
        def run() -> None:
            backward(rms_norm(leaf(8, hidden, dtype=dtype), leaf(hidden, dtype=dtype), 1e-6, impl="triton"))

        return run

    def ce_case(vocab: int) -> Callable[[], None]:
        def run() -> None:
            targets = torch.randint(0, vocab, (16,))
            backward(cross_entropy(leaf(16, vocab), targets, reduction="sum", impl="triton"))

        return run

    def flce_case() -> None:
        targets = torch.randint(0, 1000, (64,))
        backward(fused_linear_cross_entropy(leaf(64, 128), leaf(1000, 128), targets, reduction="sum", impl="triton"))

    def flce_softcap_case() -> None:
        targets = torch.randint(0, 1000, (64,))
        h, w = leaf(64, 128), leaf(1000, 128)
        backward(fused_linear_cross_entropy(h, w, targets, softcap=30.0, reduction="sum", impl="triton"))

    def swiglu_case() -> None:
        backward(swiglu(leaf(8, 352), leaf(8, 352), impl="triton"))

    def geglu_case() -> None:
        backward(geglu(leaf(8, 352), leaf(8, 352), impl="triton"))

    return [
        ("attention D64 bf16", attention_case(64, torch.bfloat16, False)),
        ("attention D128 bf16 doc-masked", attention_case(128, torch.bfloat16, True)),
        ("attention D64 fp32 doc-masked", attention_case(64, torch.float32, True, hq=4, hkv=4)),
        ("rope GQA 32/8 D128", rope_case(32, 8, 128)),
        ("rope 4/4 D64", rope_case(4, 4, 64)),
        ("rms_norm 4096 bf16", rms_case(4096, torch.bfloat16)),
        ("rms_norm 192 fp32", rms_case(192, torch.float32)),
        ("cross_entropy V32000", ce_case(32000)),
        ("fused_linear_cross_entropy", flce_case),
        ("fused_linear_cross_entropy softcap", flce_softcap_case),
        ("swiglu", swiglu_case),
        ("geglu", geglu_case),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import frontier.kernels.dispatch as dispatch

    # impl="triton" on a CPU tensor is allowed only when interpreting; here nothing is launched at all
    dispatch.triton_interpreting = lambda: True
    JITFunction.run = _run_instead_of_launch
    cases_failed = []
    for name, case in _cases():
        try:
            case()
        except Exception as exc:  # noqa: BLE001
            cases_failed.append(
                {"case": name, "error": "".join(traceback.format_exception_only(type(exc), exc)).strip()}
            )
    # entry kernels are named *_kernel (device helpers such as _dot or to_dtype are compiled inside them)
    import importlib
    import pkgutil

    import frontier.kernels

    every = set()
    for info in pkgutil.iter_modules(frontier.kernels.__path__):
        module = importlib.import_module(f"frontier.kernels.{info.name}")
        every |= {n for n, v in vars(module).items() if isinstance(v, JITFunction) and n.endswith("_kernel")}
    missed = sorted(every - {e["kernel"] for e in compiled} - {e["kernel"] for e in failed})
    report = {
        "target": f"{TARGET.backend} sm_{TARGET.arch}",
        "kernels_not_exercised": missed,
        "triton": triton.__version__,
        "torch": torch.__version__,
        "compiled": compiled,
        "failed": failed,
        "cases_failed": cases_failed,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 1 if failed or cases_failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
