"""The finetune stage (LoRA / QLoRA on prompt/response pairs) and merging an adapter into its base.

The run is the pre-training machinery with another model and other batches, assembled by the same
code (frontier.train.wiring): the DeepSpeed engine, loss module (frontier.model.loss), optimizer
groups (the adapter's: the base is frozen), training loop with its NaN guard, checkpoints, resume
and stop signals (frontier.train.loop, .checkpoint), and monitoring (TensorBoard, CSV logs,
alerts). What is finetune's own: the base and its adapter, the pairs' batches, the held-out score
before and after, and the adapter's export. Engine settings (precision, ZeRO stage, clipping,
activation checkpointing, compile, NaN guard, alerts, monitoring) come from the engine: section, shared
with train; the step budget, batch (micro_batch_size: auto included), learning rate, weight decay and
warmup from the finetune: section; nothing from train:. The fused kernels are swapped in as in
pre-training (frontier.model.kernels; they call the projection modules, so the adapter's layers stay
in the path) before the adapter is attached.

out_dir::

    adapter/             adapter_config.json + adapter_model.safetensors (peft) and the tokenizer
    metrics.json         base vs fine-tuned loss on the held-out pairs, counts
    speed.json           training time
    run.json             LoRA settings, base model, stop reason
    plots/train.csv      step, loss, lr, grad_norm, tokens_per_s
    plots/val.csv        step, val_loss (the held-out pairs)
    tb/                  TensorBoard events
    params.resolved.yaml
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from frontier.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from frontier.config import Params
    from frontier.config.finetune import FinetuneConfig
    from frontier.train.loop import Budget

log = logging.getLogger("frontier.finetune")

ADAPTER_DIR = "adapter"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def run_budget(ft: FinetuneConfig) -> Budget:
    """The loop's budget, all finetune's: the held-out loss every eval_every steps (0: at the end only), a
    checkpoint every checkpoint_every steps and at the end (the newest two and the best kept); no wall-clock
    limit, early stopping or profiler window."""
    from frontier.config.checkpoint import CheckpointConfig
    from frontier.train.loop import Budget

    return Budget("finetune", max_steps=ft.max_steps, log_every=ft.log_every, eval_every=ft.eval_every or ft.max_steps,
                  checkpoint=CheckpointConfig(every_steps=ft.checkpoint_every), resume=ft.resume)  # fmt: skip


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def finetune(params: Params, base_model_dir: Path, sft_dir: Path, out_dir: Path, checkpoints_dir: Path) -> dict:
    """Stage: LoRA-tune `base_model_dir` on sft_dir/train.jsonl, score sft_dir/heldout.jsonl before and after.

    The train stage's assembly (frontier.train.wiring) with a base model and its adapter, the pairs'
    batches and finetune's optimizer settings; only the adapter is trainable."""
    from frontier.eval.generate import model_context
    from frontier.eval.model_io import load_tokenizer
    from frontier.finetune.adapter import attach_lora, load_base, trainable_parameters
    from frontier.finetune.dataset import ExampleSampler, encode_all, eval_batches, read_records
    from frontier.model.flops import model_flops_per_token
    from frontier.model.loss import CausalLMWithLoss
    from frontier.train.batches.batch_size import global_batch
    from frontier.train.batches.data import TrainBatches
    from frontier.train.engine.schedule import LRSchedule
    from frontier.train.engine.step import evaluate
    from frontier.train.run import run_params
    from frontier.train.wiring import assemble, prepare_model, seed_all, start_ranks

    ft = params.finetune
    if params.kernels.fused_linear_cross_entropy and "lm_head" in ft.target_modules:
        raise ConfigError(
            "finetune.target_modules: 'lm_head' cannot take an adapter while kernels.fused_linear_cross_entropy is "
            "true (the fused loss reads the head weight directly); drop one of them"
        )
    base_model_dir, sft_dir = Path(base_model_dir), Path(sft_dir)
    out_dir, checkpoints_dir = Path(out_dir), Path(checkpoints_dir)
    budget = run_budget(ft)
    info = start_ranks()

    tokenizer = load_tokenizer(base_model_dir)
    seed_all(params.seed)  # the same LoRA initialisation on every rank
    lm = load_base(base_model_dir, ft.quantize, params.engine.zero_stage, info.device)
    max_len = ft.max_seq_len or model_context(lm) or 1024
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    train_examples = encode_all(tokenizer, read_records(sft_dir / "train.jsonl", tokenizer), max_len, sft_dir)
    held_examples = encode_all(tokenizer, read_records(sft_dir / "heldout.jsonl", tokenizer), max_len, sft_dir)

    lm = prepare_model(lm, params.kernels, params.engine)  # activation checkpointing: engine's, as precision
    peft_model = attach_lora(lm, ft)  # injects the adapter into `lm` in place
    trainable, total = trainable_parameters(lm)
    log.info("finetune: %d trainable of %d parameters (LoRA r=%d on %s)", trainable, total, ft.r, ft.target_modules)
    module = CausalLMWithLoss(lm, params.kernels)
    opt_cfg = dataclasses.replace(params.optimizer, lr=ft.lr, weight_decay=ft.weight_decay)
    # A changed base model, data or params starts a fresh fine-tune instead of resuming a stale one.
    weights = sorted(base_model_dir.glob("*.safetensors")) + [sft_dir / "train.jsonl"]
    ft_run = run_params(params, weights, sections=("finetune",), global_batch=global_batch(ft, info.world_size))
    seq_len = max(e.input_ids.size for e in train_examples)  # the longest pair: what auto sizes the batch for
    wiring = assemble(module, params.engine, ft, budget, opt_cfg, info, seed=params.seed, seq_len=seq_len,
                      checkpoints_dir=checkpoints_dir, identity=ft_run)  # fmt: skip

    layout = wiring.layout
    heldout = eval_batches(held_examples, layout, pad_id)
    with peft_model.disable_adapter():  # the base model, whatever state a resume brings
        base_loss = evaluate(wiring.engine, heldout, info)

    begun = wiring.begin()
    if begun.start is not None:
        log.info("finetune: resumed from %s at step %d", begun.start, begun.state.step)
    schedule_cfg = dataclasses.replace(params.schedule, warmup_steps=ft.warmup_steps)
    trainer = wiring.run(
        begun,
        TrainBatches(ExampleSampler(train_examples, params.seed, pad_id), layout),
        heldout,
        LRSchedule(schedule_cfg, ft.lr, budget.max_steps),
        seq_len=seq_len,
        flops_per_token=model_flops_per_token(lm, max_len),
    )
    state = trainer.state
    tuned_loss = evaluate(wiring.engine, heldout, info)

    metrics = {
        "base_heldout_loss": base_loss,
        "finetuned_heldout_loss": tuned_loss,
        "heldout_loss_change": tuned_loss - base_loss,
        "heldout_pairs": len(held_examples),
        "train_pairs": len(train_examples),
        "steps": state.step,
        "stop_reason": trainer.stop_reason,
        "train_loss": state.train_rows[-1]["loss"] if state.train_rows else None,
        "trainable_params": trainable,
        "total_params": total,
        "lora": {"r": ft.r, "alpha": ft.alpha, "dropout": ft.dropout, "target_modules": list(ft.target_modules)},
        "quantize": ft.quantize,
        # relative to this output (as in the adapter's config): nothing a run exports names a machine path
        "base_model": os.path.relpath(base_model_dir.resolve(), Path(out_dir).resolve()),
        "train_time_s": state.wall_seconds,
        "batch": dataclasses.asdict(wiring.split),  # machine-dependent under auto: run.json, not metrics.json
    }
    log.info("finetune: held-out loss %.4f -> %.4f", base_loss, tuned_loss)
    _export(out_dir, peft_model, wiring.engine, params, base_model_dir, begun.logs_dir, state, metrics, info)
    return metrics


def _export(
    out_dir: Path,
    peft_model: Any,
    engine: Any,
    params: Params,
    base_model_dir: Path,
    logs_dir: Path,
    state: Any,
    metrics: dict[str, Any],
    info: Any,
) -> None:
    """Collective (ZeRO-3 gathers the adapter on every rank); rank 0 writes `out_dir` atomically."""
    from frontier.provenance import record_stage
    from frontier.train.engine.engine import gathered_params
    from frontier.train.launch.distributed import barrier
    from frontier.train.monitor.monitor import TRAIN_FIELDS, VAL_FIELDS, write_csv
    from frontier.utils.atomic import atomic_dir
    from frontier.utils.metrics_files import write_metrics

    with gathered_params(engine):
        if info.is_main:
            with atomic_dir(out_dir) as tmp:
                adapter = tmp / ADAPTER_DIR
                peft_model.save_pretrained(str(adapter), safe_serialization=True)
                _point_at_base(adapter, base_model_dir, out_dir / ADAPTER_DIR)
                _copy_tokenizer(base_model_dir, adapter)
                write_metrics(tmp, metrics)
                write_csv(tmp / "plots" / "train.csv", TRAIN_FIELDS, state.train_rows)
                write_csv(tmp / "plots" / "val.csv", VAL_FIELDS, state.val_rows)
                if (logs_dir / "tb").is_dir():
                    shutil.copytree(logs_dir / "tb", tmp / "tb")
                record_stage(params, tmp, "finetune")
    barrier(info)


def _point_at_base(adapter_dir: Path, base_model_dir: Path, final_adapter_dir: Path) -> None:
    """Record the base model in adapter_config.json as a path relative to the adapter's final place
    (what `merge` loads): a runs folder moved or copied elsewhere as a whole still merges."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = os.path.relpath(Path(base_model_dir).resolve(), final_adapter_dir.resolve())
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def merge(adapter_dir: Path, out_dir: Path) -> Path:
    """Fold a LoRA adapter into its (full-precision) base and write a plain HF model directory.

    `adapter_dir` is the adapter itself or a finetune out_dir holding ``adapter/``. The result
    loads with transformers alone (safetensors + config + tokenizer), no peft needed.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from frontier.eval.model_io import from_pretrained_checked
    from frontier.provenance import write_provenance
    from frontier.utils.atomic import atomic_dir

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if (adapter_dir / ADAPTER_DIR / "adapter_config.json").is_file():
        adapter_dir = adapter_dir / ADAPTER_DIR
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{adapter_dir}: no adapter_config.json (expected a LoRA adapter directory)")
    try:
        base_dir = Path(json.loads(config_path.read_text(encoding="utf-8"))["base_model_name_or_path"])
        base_dir = base_dir if base_dir.is_absolute() else adapter_dir / base_dir  # relative to the adapter
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{config_path}: no base_model_name_or_path naming the base model directory") from None
    if not (base_dir / "config.json").is_file():
        raise CheckpointError(f"{config_path}: base model {base_dir} is not a local Hugging Face model directory")
    what = f"{adapter_dir}: cannot apply the adapter to {base_dir}"
    base = from_pretrained_checked(
        AutoModelForCausalLM.from_pretrained, base_dir, what, local_files_only=True, dtype=torch.float32
    )
    merged = from_pretrained_checked(
        lambda path, **kw: PeftModel.from_pretrained(base, path, **kw).merge_and_unload(),
        adapter_dir,
        what,
        local_files_only=True,
    )
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        source = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base_dir
        _copy_tokenizer(source, tmp)
        write_provenance(tmp)
    log.info("merge: %s + %s -> %s", base_dir, adapter_dir, out_dir)
    return out_dir
