"""Load a local Hugging Face causal-LM directory as a run at scale needs it.

``load_causal_lm`` is the one loader of a user's checkpoint (train's ``model.init_from``; public so that other
stages can call it). What it guarantees:

* the weights arrive in the run's precision (`dtype`): a bf16 run never holds an fp32 copy;
* below ZeRO-3, transformers' own ``from_pretrained`` builds the model on the meta device and fills it from
  the memory-mapped safetensors, so a rank holds one copy of the weights, in `dtype`;
* under ZeRO-3 (`zero3_config`, the run's DeepSpeed config) the model is constructed under
  ``deepspeed.zero.Init`` without initialisation, so every parameter is partitioned as it is created, and the
  safetensors shards are then read one tensor at a time: rank 0 reads a tensor and copies it into that
  parameter, gathered alone (``GatheredParameters(modifier_rank=0)``) and re-partitioned at once. The node
  holds about one copy of the weights (its partitions) plus one tensor. transformers' own ZeRO-3 load
  (HfDeepSpeedConfig + from_pretrained) would initialise every module at random and read every shard into one
  state dict on rank 0 first (a whole extra copy); it remains the fallback for a checkpoint whose names do not
  map one to one onto the model's (a family whose checkpoint transformers converts on load) or that is not
  safetensors. bench/load_memory.py measures the three.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from frontier.errors import ConfigError, FrontierError

log = logging.getLogger("frontier.model")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def precision_dtype(precision: str) -> torch.dtype:
    """The weights' dtype for engine.precision (fp32 | bf16 | fp16)."""
    return DTYPES[precision]


def read_config(path: Path, what: str = "model.init_from", error_cls: type[FrontierError] = ConfigError) -> Any:
    """The transformers config of the local model directory `path` (`what`: the key that named it, for messages)."""
    from transformers import AutoConfig

    from frontier.eval.model_io import from_pretrained_checked

    path = Path(path)
    _require_model_dir(path, what, error_cls)
    return from_pretrained_checked(
        AutoConfig.from_pretrained, path, f"{what}: cannot read {path / 'config.json'}", error_cls,
        local_files_only=True,
    )  # fmt: skip


def _require_model_dir(path: Path, what: str, error_cls: type[FrontierError]) -> None:
    if not (path / "config.json").is_file():
        raise error_cls(f"{what}: {path} is not a Hugging Face model directory (config.json missing)")


def context_length(config: Any) -> int | None:
    """The longest sequence the model's position embedding covers (None when its config does not say)."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value is not None else None


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 partitioned the model's parameters (each rank holds a slice; shapes read as empty)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def shape_twin(model: Any) -> Any:
    """`model`, or for a partitioned one a twin on the meta device built from its config: what counts
    parameters and FLOPs reads shapes, which a partition hides. No memory is allocated for the twin."""
    if not is_partitioned(model):
        return model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


@contextlib.contextmanager
def zero3_construction(ds_config: dict[str, Any]) -> Iterator[None]:
    """Inside: transformers builds models under deepspeed.zero.Init with `ds_config` (its DeepSpeed integration
    reads a process-global weak reference to an HfDeepSpeedConfig); cleared on exit so that nothing built later
    is partitioned by accident."""
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    held = HfDeepSpeedConfig(ds_config)  # the weak reference lives as long as this name
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del held


def load_causal_lm(
    path: Path,
    *,
    dtype: torch.dtype,
    zero3_config: dict[str, Any] | None = None,
    quantization_config: Any = None,
    device_map: Any = None,
    what: str = "model.init_from",
    error_cls: type[FrontierError] = ConfigError,
) -> Any:
    """The causal LM in the local directory `path`, its weights in `dtype`; partitioned as it is built when
    `zero3_config` (a DeepSpeed config of ZeRO stage 3) is given. `quantization_config` and `device_map` go to
    transformers' from_pretrained as they are (not under ZeRO-3, which places the weights itself). Failures are
    one-line `error_cls` errors naming `what` (the key that named the directory)."""
    from transformers import AutoModelForCausalLM

    from frontier.eval.model_io import from_pretrained_checked

    path = Path(path)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if zero3_config is None:
        _require_model_dir(path, what, error_cls)
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        if device_map is not None:
            kwargs["device_map"] = device_map
        return from_pretrained_checked(AutoModelForCausalLM.from_pretrained, path, f"{what}: cannot load {path}",
                                       error_cls, **kwargs)  # fmt: skip
    if quantization_config is not None or device_map is not None:
        raise error_cls(f"{what}: quantization_config / device_map cannot be combined with ZeRO-3 "
                        "(engine.zero_stage: 3 partitions the weights itself); use a lower ZeRO stage")  # fmt: skip
    config = read_config(path, what, error_cls)
    files = safetensors_files(path)
    if files:
        model = build_partitioned(config, dtype, zero3_config)
        if load_partitioned(model, files):
            _take_generation_config(model, path)
            return model
        del model
        log.info("%s: its weight names need transformers' conversion; loading through transformers", path)
    with zero3_construction(zero3_config):
        return from_pretrained_checked(AutoModelForCausalLM.from_pretrained, path, f"{what}: cannot load {path}",
                                       error_cls, **kwargs)  # fmt: skip


def build_partitioned(config: Any, dtype: torch.dtype, ds_config: dict[str, Any]) -> Any:
    """The causal LM of `config` constructed under deepspeed.zero.Init: each parameter is partitioned as its
    module is built, and none is initialised (the checkpoint's values come next). transformers' own ZeRO-3
    from_config would initialise every module at random first, gathering each in turn: compute and host memory
    for values that are overwritten. RoPE's buffers keep their fp32 (as in transformers' ZeRO-3 route)."""
    import deepspeed
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    # prevent_arange_dtype_change must be entered before zero.Init (transformers' note)
    with no_init_weights(), prevent_arange_dtype_change(), deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # init_weights, which ties, was skipped with the initialisation
    return model


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files: those its index names, or model.safetensors; [] when neither."""
    index = Path(path) / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{index}: not a safetensors index (a JSON object with weight_map): {exc}") from None
        return [Path(path) / name for name in sorted(set(weight_map.values()))]
    single = Path(path) / SINGLE_FILE
    return [single] if single.is_file() else []


def _checkpoint_keys(files: list[Path]) -> dict[Path, dict[str, tuple[int, ...]]]:
    """file -> {tensor name: shape} of every tensor in `files`, in file then name order (the same on every rank)."""
    from safetensors import safe_open

    out: dict[Path, dict[str, tuple[int, ...]]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            out[file] = {key: tuple(f.get_slice(key).get_shape()) for key in sorted(f.keys())}
    return out


def _targets(model: Any, keys: dict[Path, dict[str, tuple[int, ...]]]) -> dict[str, torch.Tensor] | None:
    """Checkpoint name -> the model's parameter or persistent buffer, when the names map one to one (a name the
    model lacks may still gain its base-model prefix, as transformers allows); None otherwise."""
    own = model.state_dict(keep_vars=True)  # tied weights appear under each of their names
    prefix = getattr(model, "base_model_prefix", "")
    mapping: dict[str, torch.Tensor] = {}
    for file, shapes in keys.items():
        for key, shape in shapes.items():
            name = key if key in own else f"{prefix}.{key}"
            if name not in own:
                return None
            expected = tuple(getattr(own[name], "ds_shape", own[name].shape))  # a partition's full shape
            if shape != expected:
                raise ConfigError(f"{file}: {key} has shape {list(shape)} but the directory's config.json makes it "
                                  f"{list(expected)}; the weights and config.json disagree")  # fmt: skip
            mapping[key] = own[name]
    covered = {id(t) for t in mapping.values()}
    if any(id(t) not in covered for t in own.values()):  # a weight the checkpoint lacks
        return None
    return mapping


def load_partitioned(model: Any, files: list[Path]) -> bool:
    """Fill the ZeRO-3-partitioned `model` from the safetensors `files`, one tensor at a time: rank 0 reads a
    tensor, the parameter is gathered alone, rank 0 copies the values in, and the parameter is re-partitioned
    as the block ends (DeepSpeed broadcasts rank 0's values). Collective: every rank walks the same names.
    False, with nothing loaded, when the checkpoint's names do not map one to one onto the model's."""
    import deepspeed
    import torch.distributed as dist
    from safetensors import safe_open

    keys = _checkpoint_keys(files)
    targets = _targets(model, keys)
    if targets is None:
        return False
    reader = dist.get_rank() == 0
    done: set[int] = set()
    for file, shapes in keys.items():
        with safe_open(str(file), framework="pt") as f:  # memory-mapped: a tensor is read when asked for
            for key in shapes:
                target = targets[key]
                if id(target) in done:  # a tied weight saved under both names
                    continue
                done.add(id(target))
                partitioned = hasattr(target, "ds_id")
                with deepspeed.zero.GatheredParameters([target] if partitioned else [], modifier_rank=0):
                    if reader or not partitioned:  # buffers are whole on every rank: each reads its own
                        with torch.no_grad():
                            target.copy_(f.get_tensor(key))
    return True


def _take_generation_config(model: Any, path: Path) -> None:
    """The directory's generation_config.json (from_config made a default one from config.json)."""
    from transformers import GenerationConfig

    if (Path(path) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path), local_files_only=True)
