"""The preference stage: DPO or ORPO (preference.loss) on prompt/chosen/rejected pairs, full, LoRA or QLoRA.

The finetune stage's assembly (frontier.finetune.run) with another loss module and other batches: the base
(and its adapter), frontier.train.wiring (DeepSpeed ZeRO 0-3, the loop with its NaN guard, checkpoints and
exact resume, monitoring), finetune's optimizer settings taken from the preference: section. What is its own:

- batches of pairs (frontier.finetune.preference_data) whose `num_targets` is their pair count, and a loss
  module (frontier.finetune.preference_loss) returning the sum of per-pair losses, so the step's
  normalisation yields the mean over the global batch's pairs;
- DPO's reference log-probabilities, computed ONCE per pair before training (the base model: for full the
  starting weights, for lora/qlora the same model with the adapter disabled) and cached in checkpoints_dir
  (reference_logps.safetensors) under a checksum of the model files, the data files and the settings that
  change them; a resume reuses the cache, a mismatching or tampered one is recomputed (a log line says why);
- rewards, margins and accuracy per step (plots/preference.csv) and on the held-out pairs before and after.

out_dir: adapter/ (lora, qlora) or model/ (full), metrics.json, speed.json, run.json, plots/train.csv,
plots/val.csv, plots/preference.csv (step, loss, rewards_chosen, rewards_rejected, margins, accuracy, and the
held-out's where evaluated), tb/, params.resolved.yaml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from frontier.config import Params
    from frontier.finetune.preference_data import Pair
    from frontier.train.launch.distributed import DistInfo

log = logging.getLogger("frontier.finetune")

CACHE_FILE = "reference_logps.safetensors"
SPLITS = ("train", "heldout")
PREF_FIELDS = ("step", "loss", "rewards_chosen", "rewards_rejected", "margins", "accuracy",
               "heldout_loss", "heldout_rewards_chosen", "heldout_rewards_rejected", "heldout_margins",
               "heldout_accuracy")  # fmt: skip
RefLogps = dict[int, tuple[float, float]]  # pair index -> (chosen, rejected) log-probs under the reference


# -- the reference cache ------------------------------------------------------------------------------------------


def reference_checksum(model_dir: Path, data_files: list[Path], settings: dict[str, Any]) -> str:
    """sha256 over the model's files, the data files and the settings the reference log-probs depend on."""
    from frontier.utils.hashing import sha256_file

    model_files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in (".safetensors", ".json"))
    record = {
        "model": {p.name: sha256_file(p) for p in model_files},
        "data": {f"{p.parent.name}/{p.name}": sha256_file(p) for p in data_files},
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _content_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _to_tensors(ref: dict[str, RefLogps]) -> dict[str, torch.Tensor]:
    out = {}
    for split, values in ref.items():
        keys = sorted(values)
        out[f"{split}.index"] = torch.tensor(keys, dtype=torch.int64)
        out[f"{split}.logps"] = torch.tensor([values[k] for k in keys], dtype=torch.float64).reshape(-1, 2)
    return out


def write_cache(path: Path, ref: dict[str, RefLogps], checksum: str) -> None:
    """Atomically: the reference log-probs (safetensors, no pickle) with the inputs' checksum and a digest of
    the content itself."""
    from safetensors.torch import save_file

    tensors = _to_tensors(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"checksum": checksum, "content": _content_digest(tensors)})
    os.replace(tmp, path)


def read_cache(path: Path, checksum: str) -> dict[str, RefLogps] | None:
    """The cached log-probs when `path` holds them for `checksum` and its content is intact; else None, with a
    log line saying why (missing, stale, unreadable, tampered)."""
    from safetensors import safe_open

    if not path.is_file():
        log.info("preference: no reference cache at %s: computing the reference log-probs", path)
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # a truncated or foreign file
        log.warning("preference: reference cache %s unreadable (%s): recomputing", path, str(exc)[:200])
        return None
    if meta.get("checksum") != checksum:
        log.warning("preference: reference cache %s was made from other inputs (checksum mismatch): recomputing", path)
        return None
    if meta.get("content") != _content_digest(tensors):
        log.warning("preference: reference cache %s does not match its own digest (modified): recomputing", path)
        return None
    out: dict[str, RefLogps] = {}
    for split in SPLITS:
        if f"{split}.index" not in tensors:
            log.warning("preference: reference cache %s lacks the %s split: recomputing", path, split)
            return None
        keys, logps = tensors[f"{split}.index"].tolist(), tensors[f"{split}.logps"].tolist()
        out[split] = {k: (c, r) for k, (c, r) in zip(keys, logps)}
    return out


@torch.no_grad()
def compute_reference(engine: Any, pairs: list[Pair], micro: int, pad_id: int, info: DistInfo) -> RefLogps:
    """The reference log-probs of every pair, through the engine (ZeRO-3 gathers as in training). Every rank
    runs every batch (the same count everywhere: the forwards are collective under ZeRO-3)."""
    from frontier.finetune.preference_data import collate_pairs

    out: RefLogps = {}
    engine.eval()
    try:
        for k in range(0, len(pairs), micro):
            chunk = pairs[k : k + micro]
            batch = collate_pairs(chunk, pad_id)
            sums = engine(**batch.model_inputs(info.device), return_logps=True).double().cpu().tolist()
            n = len(chunk)
            out.update({p.index: (sums[i], sums[n + i]) for i, p in enumerate(chunk)})
    finally:
        engine.train()
    return out


# -- the stage ----------------------------------------------------------------------------------------------------


def _data_files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def _step_rows(rows: list[torch.Tensor], first_step: int, per_step: int, steps: int, info: DistInfo) -> list[dict]:
    """The train tally (one row per micro-batch forward) -> a row per step, summed over ranks."""
    from frontier.finetune.preference_loss import summarize
    from frontier.train.launch.distributed import all_reduce_sum

    if len(rows) != steps * per_step:  # a NaN rollback re-ran steps: the rows no longer line up with steps
        log.warning("preference: %d forwards for %d steps; per-step rewards not written", len(rows), steps)
        return []
    if not rows:
        return []
    per = torch.stack(rows).cpu().reshape(steps, per_step, -1).sum(dim=1)  # (steps, len(STATS)), this rank's
    summed = torch.tensor(all_reduce_sum(per.flatten().tolist(), info), dtype=torch.float64).reshape(steps, -1)
    return [{"step": first_step + s + 1, **{k: v for k, v in summarize([summed[s]]).items() if k != "pairs"}}
            for s in range(steps)]  # fmt: skip


def _heldout_stats(engine: Any, module: Any, batches: list, info: DistInfo) -> dict[str, float]:
    """Mean loss, rewards, margins, accuracy over the held-out pairs of every rank."""
    from frontier.finetune.preference_loss import summarize
    from frontier.train.launch.distributed import all_reduce_sum

    module.tally["eval"].clear()
    engine.eval()
    try:
        with torch.no_grad():
            for b in batches:
                engine(**b.model_inputs(info.device))
    finally:
        engine.train()
    rows = module.tally["eval"]
    summed = torch.tensor(all_reduce_sum(torch.stack(rows).sum(dim=0).tolist(), info), dtype=torch.float64)
    module.tally["eval"].clear()
    return summarize([summed])


def preference(params: Params, model_dir: Path, data_dir: Path, out_dir: Path, checkpoints_dir: Path) -> dict:
    """Stage: DPO or ORPO on data_dir/train.jsonl (scored on data_dir/heldout.jsonl) from `model_dir` (the SFT'd
    model), per params.preference."""
    from frontier.eval.generate import model_context
    from frontier.eval.model_io import load_tokenizer
    from frontier.finetune.adapter import adapted_modules, attach_lora, check_targets, load_base, trainable_parameters
    from frontier.finetune.dataset import split_file
    from frontier.finetune.export import export_finetune
    from frontier.finetune.preference_data import PairSampler, pair_eval_batches, read_pairs
    from frontier.finetune.preference_loss import PreferenceLoss
    from frontier.finetune.run import run_budget
    from frontier.model.flops import model_flops_per_token
    from frontier.model.load import shape_twin
    from frontier.provenance import record_stage
    from frontier.train.batches.batch_size import global_batch
    from frontier.train.batches.data import TrainBatches
    from frontier.train.engine.schedule import LRSchedule
    from frontier.train.launch.distributed import barrier
    from frontier.train.run import run_params
    from frontier.train.wiring import assemble, placement, prepare_model, seed_all, start_ranks

    pc = params.preference
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    out_dir, checkpoints_dir = Path(out_dir), Path(checkpoints_dir)
    budget = dataclasses.replace(run_budget(pc), stage="preference")
    info = start_ranks()

    tokenizer = load_tokenizer(model_dir)
    seed_all(params.seed)
    place = placement(params.engine, info)
    lm = load_base(model_dir, pc.quantize, info.device, place.dtype,
                   zero3_config=None if pc.adapter else place.zero3_config)  # fmt: skip
    max_len = pc.max_seq_len or model_context(lm) or 1024
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    files = {split: split_file(data_dir, split) for split in SPLITS}
    pairs = {split: read_pairs(files[split], tokenizer, max_len) for split in SPLITS}
    same = sum(1 for p in pairs["train"] if p.chosen.tolist() == p.rejected.tolist())
    if same:  # allowed (DPO's gradient is zero for them, ORPO still learns the chosen), but likely a data bug
        log.warning("preference: %d train pair(s) with chosen == rejected: they teach no preference", same)

    train_len = max(p.prompt.size + max(p.chosen.size, p.rejected.size) for p in pairs["train"]) - 1
    prepare_model(lm, params.kernels, params.engine, seq_len=train_len)
    peft_model = None
    if pc.adapter:
        check_targets(lm, pc, fused_head=params.kernels.fused_linear_cross_entropy)
        peft_model = attach_lora(lm, pc)
        log.info("preference: %s r=%d on %s", pc.method, pc.r, ", ".join(adapted_modules(lm)))
    shapes = shape_twin(lm)
    trainable, total = trainable_parameters(lm if shapes is lm else shapes)
    module = PreferenceLoss(lm, pc.loss, pc.beta, pc.orpo_lambda, params.kernels, orpo_nll=pc.orpo_nll)
    opt_cfg = dataclasses.replace(params.optimizer, lr=pc.lr, weight_decay=pc.weight_decay)
    data_files = [f for split in SPLITS for f in _data_files(files[split])]
    weights = sorted(model_dir.glob("*.safetensors")) + data_files
    run_id = run_params(params, weights, sections=("preference",), global_batch=global_batch(pc, info.world_size))
    # a sample is a pair: two rows of up to train_len positions (what auto sizes the batch for, and what the
    # loop counts as a sample's tokens)
    sample_len = 2 * train_len
    wiring = assemble(module, params.engine, pc, budget, opt_cfg, info, seed=params.seed, seq_len=sample_len,
                      checkpoints_dir=checkpoints_dir, identity=run_id)  # fmt: skip
    layout = wiring.layout

    # DPO's reference, before begin() loads a checkpoint: the engine still holds the starting weights
    ref: dict[str, RefLogps] | None = None
    if pc.loss == "dpo":
        settings = {"max_len": max_len, "quantize": pc.quantize, "precision": params.engine.precision,
                    "kernels": dataclasses.asdict(params.kernels), "pad_id": pad_id}  # fmt: skip
        checksum = reference_checksum(model_dir, data_files, settings)
        cache = checkpoints_dir / CACHE_FILE
        ref = read_cache(cache, checksum)
        barrier(info)  # every rank has decided before rank 0 may write: the same forwards everywhere
        if ref is None:
            with peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext():
                ref = {s: compute_reference(wiring.engine, pairs[s], layout.micro_batch_size, pad_id, info)
                       for s in SPLITS}  # fmt: skip
            if info.is_main:
                write_cache(cache, ref, checksum)
                log.info("preference: reference log-probs of %d pairs cached in %s",
                         sum(len(v) for v in ref.values()), cache)  # fmt: skip
            barrier(info)
    heldout = pair_eval_batches(pairs["heldout"], layout, pad_id, ref["heldout"] if ref else None)
    before = _heldout_stats(wiring.engine, module, heldout, info)

    begun = wiring.begin()
    if begun.start is not None:
        log.info("preference: resumed from %s at step %d", begun.start, begun.state.step)
    first_step = begun.state.step
    module.tally["train"].clear()
    module.tally["eval"].clear()
    trainer = wiring.run(
        begun,
        TrainBatches(PairSampler(pairs["train"], params.seed, pad_id, ref["train"] if ref else None), layout),
        heldout,
        LRSchedule(dataclasses.replace(params.schedule, warmup_steps=pc.warmup_steps), pc.lr, budget.max_steps),
        seq_len=sample_len,
        flops_per_token=model_flops_per_token(shapes, max_len),
    )
    state = trainer.state
    pref_rows = _step_rows(module.tally["train"], first_step, layout.grad_accum_steps, state.step - first_step, info)
    evals = module.tally["eval"]
    if heldout and evals and len(evals) % len(heldout) == 0:  # the loop's evaluations in this segment
        groups = [_sum_rows(evals[i : i + len(heldout)], info) for i in range(0, len(evals), len(heldout))]
        by_step = {r["step"]: r for r in pref_rows}
        for val, g in zip(state.val_rows[-len(groups) :], groups):
            row = by_step.setdefault(val["step"], {"step": val["step"]})
            row.update({f"heldout_{k}": v for k, v in g.items() if k != "pairs"})
        pref_rows = sorted(by_step.values(), key=lambda r: r["step"])
    after = _heldout_stats(wiring.engine, module, heldout, info)

    metrics: dict[str, Any] = {
        "loss_kind": pc.loss,
        "train_pairs": len(pairs["train"]),
        "heldout_pairs": len(pairs["heldout"]),
        **{f"base_heldout_{k}": v for k, v in before.items() if k != "pairs"},
        **{f"tuned_heldout_{k}": v for k, v in after.items() if k != "pairs"},
        "steps": state.step,
        "stop_reason": trainer.stop_reason,
        "train_loss": state.train_rows[-1]["loss"] if state.train_rows else None,
        "trainable_params": trainable,
        "total_params": total,
        "method": pc.method,
        "beta": pc.beta,
        "orpo_lambda": pc.orpo_lambda,
        "orpo_nll": pc.orpo_nll,
        "precision": params.engine.precision,
        "zero_stage": params.engine.zero_stage,
        "base_model": os.path.relpath(model_dir.resolve(), out_dir.resolve()),
        "train_time_s": state.wall_seconds,
        "batch": dataclasses.asdict(wiring.split),
    }
    if pref_rows:
        last = pref_rows[-1]
        metrics.update({f"train_{k}": last[k] for k in PREF_FIELDS[1:6] if k in last})
    log.info("preference: held-out loss %.4f -> %.4f, accuracy %.3f -> %.3f", before["loss"], after["loss"],
             before["accuracy"], after["accuracy"])  # fmt: skip
    export_finetune(out_dir, peft_model, module, wiring.engine, params, model_dir, begun.logs_dir, state, metrics,
                    info, record=lambda d: record_stage(params, d, "preference"),
                    plots={"preference.csv": (PREF_FIELDS, pref_rows)})  # fmt: skip
    return metrics


def _sum_rows(rows: list[torch.Tensor], info: DistInfo) -> dict[str, float]:
    from frontier.finetune.preference_loss import summarize
    from frontier.train.launch.distributed import all_reduce_sum

    summed = torch.tensor(all_reduce_sum(torch.stack(rows).sum(dim=0).tolist(), info), dtype=torch.float64)
    return summarize([summed])
