"""Two CPU A/B measurements behind issue 15's changes, each variant timed in interleaved rounds in one process.

    OMP_NUM_THREADS=1 python bench/cpu_ab.py gelu            # the shakespeare_char training step, 3 activations
    OMP_NUM_THREADS=1 python bench/cpu_ab.py cross_entropy   # the loss on the default Llama's logits

gelu: the model of configs/shakespeare_char.yaml (batch 12 x 64, fp32), forward + loss, backward and a torch
fused AdamW step, with GPT-2's MLP activation as transformers' gelu_new (seven elementwise ops), as torch's
fused tanh GELU (gelu_pytorch_tanh: the same function, Frontier's gpt2 default) and as the exact GELU
(model.mlp_activation: gelu, nanoGPT's). cross_entropy: fp32 logits 2048 x 4096 (micro-batch 16 x 128 tokens,
vocabulary 4096), forward and backward of the summed loss, by logsumexp-and-gather (the reference's formula
before 69f6036) and by frontier.kernels.cross_entropy.cross_entropy_reference now (F.cross_entropy per row).
Prints the median and quartiles of each variant, ms. No assertion on timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # frontier from this checkout

import torch  # noqa: E402


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict[str, list[float]]:
    """ms per call of each variant: warm-up, then rounds in alternating order (drift cancels)."""
    for run in variants.values():
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(per_round):
                start = time.perf_counter()
                variants[name]()
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def gelu_variants() -> dict[str, Callable[[], None]]:
    from transformers import GPT2LMHeadModel

    from frontier.config import load_params
    from frontier.model.build import hf_config
    from frontier.model.loss import CausalLMWithLoss

    params = load_params(Path(__file__).resolve().parents[1] / "configs" / "shakespeare_char.yaml")
    windows = torch.randint(0, 69, (12, 65))  # (batch, seq_len + 1): 65 characters + 4 specials

    def step_with(activation: str) -> Callable[[], None]:
        torch.manual_seed(0)
        config = hf_config(params.model, 69, bos_id=None, eos_id=None, pad_id=None)
        config.activation_function = activation
        module = CausalLMWithLoss(GPT2LMHeadModel(config), params.kernels)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, fused=True)

        def step() -> None:
            module(windows[:, :-1], windows[:, 1:]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    return {name: step_with(name) for name in ("gelu_new", "gelu_pytorch_tanh", "gelu")}


def cross_entropy_variants() -> dict[str, Callable[[], None]]:
    from frontier.kernels.cross_entropy import cross_entropy_reference

    logits = torch.randn(2048, 4096, requires_grad=True)
    targets = torch.randint(0, 4096, (2048,))

    def by_formula() -> None:
        lse = torch.logsumexp(logits, -1)  # (N,)
        (lse - logits.gather(1, targets[:, None])[:, 0]).sum().backward()

    return {
        "logsumexp + gather (before)": by_formula,
        "F.cross_entropy (now)": lambda: cross_entropy_reference(logits, targets, reduction="sum").backward(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["gelu", "cross_entropy"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.per_round < 1 or args.rounds * args.per_round < 2:
        parser.error("--rounds and --per-round must be at least 1, and time at least 2 calls together (quartiles)")
    variants = gelu_variants() if args.what == "gelu" else cross_entropy_variants()
    print(f"{args.what}: torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, ms in interleaved(variants, args.rounds, args.per_round).items():
        q1, median, q3 = statistics.quantiles(ms, n=4)
        print(f"  {name:28s} median {median:7.2f} ms  (quartiles {q1:.2f}-{q3:.2f}, n={len(ms)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
