"""The loss of a global batch is the mean over all its non-masked tokens, whatever the accumulation split."""

from __future__ import annotations

import torch

from frontier.data.tokens import TokenShards
from frontier.model.build import build_model
from frontier.model.kernels import apply_kernels
from frontier.model.loss import CausalLMWithLoss
from frontier.train.batches.data import Layout, TrainBatches, WindowSampler
from frontier.train.run import train
from frontier.train.wiring import seed_all
from tests.train.helpers import assert_same_run, losses, params, weights

# document-aware windows over documents of 4..40 tokens with seq_len 16: padded, variable-length batches
BASE = ("train.document_aware=true", "train.max_steps=3", "optimizer.lr=1e-2")


def _run(tmp_path, corpus, name, *overrides):
    out = tmp_path / name
    train(params(*BASE, *overrides), corpus.tokens, corpus.tokenizer, out, tmp_path / f"{name}-ckpt")
    return out


def _first_step_means(corpus, seed: int) -> tuple[float, float]:
    """(token mean, mean of micro-batch means) of the first global batch (4 micro-batches of 1) that
    train() sees with `seed`, under the weights it starts from."""
    p = params(*SETUP, f"seed={seed}")
    shards = TokenShards(corpus.tokens / "train")
    micro = TrainBatches(WindowSampler(shards, 16, p.seed, True), Layout(1, 4, 1, 0)).step(0)
    counts = [b.num_targets for b in micro]
    seed_all(p.seed)  # the weights train() starts from, and the module it trains (each micro-batch's summed loss)
    lm = apply_kernels(build_model(p.model, shards.vocab_size, bos_id=1, eos_id=2, pad_id=0), p.kernels)
    module = CausalLMWithLoss(lm, p.kernels)
    with torch.no_grad():
        sums = [module(**b.model_inputs(torch.device("cpu"))).double().item() for b in micro]
    return sum(sums) / sum(counts), sum(s / c for s, c in zip(sums, counts)) / len(counts)


# a wide init spreads the per-token losses, so a mean of micro-batch means visibly differs
SETUP = (*BASE, "model.init_std=0.5", "train.micro_batch_size=1", "train.grad_accum_steps=4")


def test_first_step_loss_is_the_token_mean_of_the_global_batch(tmp_path, corpus):
    # Packed windows differ in length only by the targets ignored at document boundaries, so the two
    # definitions of the loss can nearly agree: take the first seed (deterministic) where they clearly differ.
    for seed in range(64):
        token_mean, mean_of_means = _first_step_means(corpus, seed)
        tolerance = 1e-5 * token_mean
        if abs(token_mean - mean_of_means) > 100 * tolerance:  # the two definitions really differ here
            break
    else:
        raise AssertionError("no seed in 0..63 gives a first batch where the two loss definitions differ")
    out = _run(tmp_path, corpus, "a", *SETUP[len(BASE) :], f"seed={seed}")
    assert abs(losses(out)[0] - token_mean) < tolerance


def test_micro4_accum1_equals_micro1_accum4(tmp_path, corpus):
    a = _run(tmp_path, corpus, "m4", "train.micro_batch_size=4", "train.grad_accum_steps=1")
    b = _run(tmp_path, corpus, "m1", "train.micro_batch_size=1", "train.grad_accum_steps=4")
    assert_same_run(a, b)
    wa = weights(a)
    # the updates were real: weights moved by far more than the tolerance
    init = weights(_run(tmp_path, corpus, "zero", "train.micro_batch_size=4", "optimizer.lr=1e-12"))
    moved = max((wa[n] - init[n]).abs().max().item() for n in wa)
    assert moved > 1e-3
