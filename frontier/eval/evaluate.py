"""The evaluate stage: held-out loss, perplexity, bits-per-byte against a unigram floor, samples, and the
scores users compare models by: lm-evaluation-harness tasks (evaluate.harness) and pass@k (evaluate.passk).

Bits-per-byte = total nats / ln 2 / UTF-8 bytes of the evaluated text. The token split records
the bytes of its whole text (``num_bytes``); when `evaluate.max_tokens` limits the evaluation to
the first part of the split, the byte count is scaled by the fraction of tokens evaluated and
``bytes_estimated`` is true in metrics.json (bytes per token vary little over a large stretch of
one corpus, but it is an estimate). Per-source figures (with a prepared directory) use whole
documents and exact byte counts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from frontier.config import Params
from frontier.errors import DataError
from frontier.eval.generate import complete, model_context
from frontier.eval.harness import run_harness
from frontier.eval.loss import bits_per_byte, perplexity, sum_nats
from frontier.eval.model_io import load_model
from frontier.eval.passk import PassKScore, score_passk
from frontier.eval.per_source import read_val_docs, source_metrics
from frontier.eval.sandbox import SandboxUnavailable
from frontier.eval.unigram import add_one_log_probs, token_counts, unigram_nats

log = logging.getLogger(__name__)

_DEFAULT_CONTEXT = 1024  # for models whose config names no context length


def _vocab_rows(model: torch.nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def heldout_metrics(model: torch.nn.Module, tokens_dir: Path, cfg: Any, seq_len: int) -> dict[str, Any]:
    """Loss, perplexity and bits-per-byte on val, and the unigram floor fitted on train."""
    from frontier.data.tokens import TokenShards

    val = TokenShards(Path(tokens_dir) / "val")
    train = TokenShards(Path(tokens_dir) / "train")
    if val.vocab_size > _vocab_rows(model):
        raise DataError(
            f"{val.dir}: tokens use a vocabulary of {val.vocab_size} ids but the model embeds only "
            f"{_vocab_rows(model)}; were they made with this model's tokenizer?"
        )
    if val.num_tokens < 2:
        raise DataError(f"{val.dir}: {val.num_tokens} tokens; at least 2 are needed to score a prediction")
    n_eval = min(val.num_tokens, cfg.max_tokens or val.num_tokens)
    device = next(model.parameters()).device
    nats, count = sum_nats(model, val.read, n_eval, seq_len, cfg.batch_size, device)
    estimated = n_eval < val.num_tokens
    num_bytes = val.num_bytes * (n_eval / val.num_tokens) if estimated else float(val.num_bytes)
    if num_bytes <= 0:
        raise DataError(f"{val.dir}: meta.json records num_bytes={val.num_bytes}; bits-per-byte needs the text size")

    vocab = max(train.vocab_size, val.vocab_size)
    log_probs = add_one_log_probs(token_counts(train.read, train.num_tokens, vocab))
    targets = token_counts(val.read, n_eval, vocab, first=1)  # exactly the positions the model predicted
    uni_nats = unigram_nats(log_probs, targets)

    loss = nats / count
    bpb = bits_per_byte(nats, num_bytes)
    uni_bpb = bits_per_byte(uni_nats, num_bytes)
    return {
        "val_loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": bpb,
        "unigram_loss": uni_nats / count,
        "unigram_bits_per_byte": uni_bpb,
        "bpb_vs_unigram": 1.0 - bpb / uni_bpb,
        "tokens_evaluated": count,
        "bytes_evaluated": num_bytes,
        "bytes_estimated": estimated,
        "val_tokens_total": val.num_tokens,
        "train_tokens_for_unigram": train.num_tokens,
    }


def generation_samples(model: torch.nn.Module, tokenizer: Any, cfg: Any, seed: int) -> list[dict[str, Any]]:
    """For each prompt: the greedy continuation and `samples_per_prompt` sampled ones, seeded."""
    s = cfg.sampling
    records: list[dict[str, Any]] = []
    for i, prompt in enumerate(cfg.prompts):
        runs = [("greedy", 1, 0.0)]
        if cfg.samples_per_prompt:
            runs.append(("sample", cfg.samples_per_prompt, s.temperature))
        for mode, n, temperature in runs:
            texts = complete(
                model,
                tokenizer,
                prompt,
                n=n,
                max_new_tokens=s.max_new_tokens,
                temperature=temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                seed=seed + i,
            )
            for text in texts:
                records.append(
                    {
                        "prompt": prompt,
                        "mode": mode,
                        "completion": text,
                        "seed": seed + i,
                        "temperature": temperature,
                        "top_k": s.top_k if mode == "sample" else None,
                        "top_p": s.top_p if mode == "sample" else None,
                    }
                )
    return records


def evaluate(
    params: Params, model_dir: Path, tokens_dir: Path, out_dir: Path, prepared_dir: Path | None = None
) -> dict:
    """Stage: write metrics.json (+ run.json), samples.jsonl and params.resolved.yaml into `out_dir`."""
    from frontier.provenance import record_stage
    from frontier.utils.atomic import atomic_dir
    from frontier.utils.metrics_files import write_metrics

    cfg = params.evaluate
    model, tokenizer = load_model(Path(model_dir))
    seq_len = cfg.seq_len or model_context(model) or _DEFAULT_CONTEXT
    if model_context(model) is not None:
        seq_len = min(seq_len, model_context(model))
    device = next(model.parameters()).device
    metrics: dict[str, Any] = {"model_dir": str(model_dir), "seq_len": seq_len}
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    metrics.update(heldout_metrics(model, Path(tokens_dir), cfg, seq_len))
    log.info(
        "evaluate: val_loss %.4f, %.4f bits/byte (unigram %.4f)",
        metrics["val_loss"],
        metrics["bits_per_byte"],
        metrics["unigram_bits_per_byte"],
    )
    if prepared_dir is not None:
        metrics["per_source"] = {
            source: source_metrics(
                model,
                tokenizer,
                docs,
                max_tokens=cfg.per_source_max_tokens,
                append_eos=params.tokenize.append_eos,
                prepend_bos=params.tokenize.prepend_bos,
                seq_len=seq_len,
                batch_size=cfg.batch_size,
                device=device,
            )
            for source, docs in sorted(read_val_docs(Path(prepared_dir)).items())
        }
    samples = generation_samples(model, tokenizer, cfg, params.seed)
    metrics["samples"] = len(samples)
    with atomic_dir(out_dir) as tmp:
        # the tasks' YAMLs as they ran go into the output (lm_eval --include_path <out>/harness/tasks reruns them)
        if cfg.harness.tasks:
            metrics["harness"] = run_harness(model, tokenizer, cfg.harness, tmp / "harness" / "tasks")
        passk = _passk(model, tokenizer, cfg.passk, params.seed)
        if passk is not None:
            figures, score = passk
            metrics.update(figures)
            if score is not None:
                score.write_completions(tmp / "passk_completions.jsonl")
        write_metrics(tmp, metrics)  # numbers in metrics.json; model_dir, bytes_estimated in run.json
        with open(tmp / "samples.jsonl", "w", encoding="utf-8") as f:
            for rec in samples:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        record_stage(params, tmp, "evaluate")
    return metrics


def _passk(model: Any, tokenizer: Any, cfg: Any, seed: int) -> tuple[dict[str, Any], PassKScore | None] | None:
    """pass@k on the model in memory when `cfg.in_evaluate`: ({"passk": figures, "passk_set": ...}, the score).
    Without a sandbox the stage's other results stand: pass@k is skipped, and why is in run.json."""
    if not cfg.in_evaluate:
        return None
    try:
        score = score_passk(model, tokenizer, cfg, seed)
    except SandboxUnavailable as exc:
        log.warning("evaluate: pass@k skipped: %s", exc)
        return {"passk_skipped": str(exc)}, None
    log.info("evaluate: %s", ", ".join(f"{k} {v:.3f}" for k, v in score.metrics.items() if k.startswith("pass@")))
    return {"passk": score.metrics, "passk_set": score.problem_set}, score
