"""What a checkpoint holds besides DeepSpeed's model/optimizer files: the trainer state and RNG.

Both are JSON (no pickle): the trainer state once per checkpoint, the RNG state of Python,
NumPy and torch (CPU and CUDA) once per rank. The data position is just ``step``: batches are
a pure function of (seed, step, rank) (frontier.train.batches.data).

Both are validated in full before anything is applied to the live run (ValueError naming the field):
a manifest proves only that the files are the ones written, not that what was written (or rewritten
with a matching manifest) makes sense, and an emptied trainer state would otherwise resume "at step
0" on trained weights.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frontier.utils.atomic import atomic_file

log = logging.getLogger("frontier.train")


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done (the next step to run)
    tokens: int = 0  # positions trained on (global)
    target_tokens: int = 0  # of which non-padding targets
    wall_seconds: float = 0.0  # time inside optimizer steps, over all segments of the run
    elapsed_seconds: float = 0.0  # wall-clock time of the loop (eval and checkpoints included)
    lr_scale: float = 1.0  # lowered by NaN rollbacks
    rollbacks: int = 0
    nan_skipped: int = 0
    nan_streak: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    last_val_loss: float | None = None
    train_rows: list[dict[str, float]] = field(default_factory=list)  # step, loss, lr, grad_norm, tokens_per_s
    val_rows: list[dict[str, float]] = field(default_factory=list)  # step, val_loss
    seed: int | None = None
    world_size: int = 1
    global_batch: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # shape-defining settings (frontier.model.build)
    run_id: str = ""  # names the run in its checkpoints' manifests (pruning and rollback stay within it)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        """Parse and validate every field; ValueError naming the first bad one (unknown keys are ignored)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.name not in _LEGACY]
        if missing:
            raise ValueError(
                f"field {missing[0]!r} is missing" + (f" (and {len(missing) - 1} more)" if missing[1:] else "")
            )
        state = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        state.validate()
        return state

    def validate(self) -> None:
        """ValueError naming the first field that has the wrong type or lies out of range."""
        for name in ("step", "tokens", "target_tokens", "rollbacks", "nan_skipped", "nan_streak", "evals_since_best",
                     "global_batch"):  # fmt: skip
            _int(name, getattr(self, name), low=0)
        _int("world_size", self.world_size, low=1)
        for name in ("wall_seconds", "elapsed_seconds"):
            _float(name, getattr(self, name), low=0.0)
        _float("lr_scale", self.lr_scale, low=0.0, high=1.0)  # only ever lowered (by rollbacks), never to 0
        if self.lr_scale == 0.0:
            raise ValueError("lr_scale=0 would train nothing; expected 0 < lr_scale <= 1")
        if self.best_val_loss is not None:
            _float("best_val_loss", self.best_val_loss)
        if self.best_step is not None:
            _int("best_step", self.best_step, low=0, high=self.step)
        if self.last_val_loss is not None:
            _float("last_val_loss", self.last_val_loss, finite=False)  # an eval may have measured NaN
        if self.seed is not None:
            _int("seed", self.seed)
        _rows("train_rows", self.train_rows, self.step)
        _rows("val_rows", self.val_rows, self.step)
        if not isinstance(self.model, dict):
            raise ValueError(f"model is {type(self.model).__name__}, expected an object")
        if not isinstance(self.run_id, str):
            raise ValueError(f"run_id is {type(self.run_id).__name__}, expected a string")


# Fields a checkpoint of an earlier version lacks and may still lack: its run gets a new id on resume
# (CheckpointStore.begin), and its manifest names no run id either (checked against it on load).
_LEGACY = {"run_id"}


def _int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):  # JSON true and 5.0 are not counts
        raise ValueError(f"{name}={value!r} is {type(value).__name__}, expected an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range, expected {low if low is not None else '...'}.."
                         f"{high if high is not None else ''}")  # fmt: skip


def _float(name: str, value: Any, low: float | None = None, high: float | None = None, *, finite: bool = True) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is {type(value).__name__}, expected a number")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name}={value} is not finite")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range, expected {low if low is not None else '...'}.."
                         f"{high if high is not None else ''}")  # fmt: skip


def _rows(name: str, rows: Any, step: int) -> None:
    """A metric history: objects of numbers (non-finite allowed: a skipped step's loss) or nulls, at steps
    up to the state's own."""
    if not isinstance(rows, list):
        raise ValueError(f"{name} is {type(rows).__name__}, expected a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"{name}[{i}] is not an object with a step")
        _int(f"{name}[{i}].step", row["step"], low=0, high=step)
        for key, value in row.items():
            if value is not None:
                _float(f"{name}[{i}].{key}", value, finite=False)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as JSON-ready data."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return state


def _bytes_tensor(text: str) -> torch.Tensor:
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, found {type(text).__name__}")
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def validate_rng(state: Any) -> None:
    """ValueError unless `state` (from capture_rng, as JSON) restores on this machine: each part is set on a
    scratch generator of its kind first, so a damaged one never reaches the live generators."""
    try:
        if not isinstance(state, dict):
            raise ValueError(f"expected an object, found {type(state).__name__}")
        for part in ("python", "numpy", "torch"):
            if part not in state:
                raise ValueError(f"{part!r} is missing")
        version, mt, gauss = state["python"]
        if not isinstance(mt, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in mt):
            raise ValueError("python: the Mersenne Twister state is not a list of integers")
        random.Random().setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        if not (isinstance(pos, int) and 0 <= pos <= 624 and has_gauss in (0, 1) and isinstance(cached, float)
                and math.isfinite(cached)):  # fmt: skip
            raise ValueError("numpy: position, gauss flag or cached value out of range")
        if not isinstance(keys, list) or not all(isinstance(x, int) and 0 <= x < 2**32 for x in keys):
            raise ValueError("numpy: the key is not a list of 32-bit integers")
        np.random.RandomState().set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.Generator().set_state(_bytes_tensor(state["torch"]))
        if "cuda" in state:
            cuda = state["cuda"]
            if not isinstance(cuda, list):
                raise ValueError("cuda: expected a list of states")
            blobs = [_bytes_tensor(s) for s in cuda]
            if torch.cuda.is_available():  # states for devices not visible here are not restored (restore_rng)
                for i, blob in enumerate(blobs[: torch.cuda.device_count()]):
                    if blob.numel() != torch.cuda.get_rng_state(i).numel():
                        raise ValueError(f"cuda: device {i}'s state has {blob.numel()} bytes")
    except ValueError:
        raise
    except (TypeError, KeyError, IndexError, OverflowError, RuntimeError, binascii.Error) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ValueError(f"malformed ({first})") from None


def restore_rng(state: dict[str, Any]) -> None:
    """Set this process's generators from `state` as read_rng returns it (validated there, before anything
    of its checkpoint was applied). CUDA states beyond the devices visible here are left out with a warning
    (resumed with fewer GPUs per process); devices beyond the states keep their generators."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda, visible = state["cuda"], torch.cuda.device_count()
        if len(cuda) > visible:
            log.warning("RNG state holds %d CUDA generator(s), %d device(s) are visible here: restored the first %d",
                        len(cuda), visible, visible)  # fmt: skip
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in cuda[:visible]])


def rng_file(directory: Path, rank: int) -> Path:
    return directory / "rng" / f"rank_{rank:05d}.json"


def write_rng(directory: Path, rank: int) -> None:
    path = rng_file(directory, rank)
    with atomic_file(path) as f:
        json.dump(capture_rng(), f)


def read_rng(directory: Path, rank: int) -> dict[str, Any] | None:
    """This rank's RNG state from `directory`, validated (the one place it is: restore_rng trusts it); None
    when it has none; ValueError when it is damaged."""
    path = rng_file(directory, rank)
    if not path.is_file():
        return None
    state = json.loads(path.read_text(encoding="utf-8"))  # JSONDecodeError / UnicodeDecodeError: ValueErrors
    validate_rng(state)
    return state
