"""What a checkpoint holds besides DeepSpeed's model/optimizer files: the trainer state and RNG.

Both are JSON (no pickle): the trainer state once per checkpoint, the RNG state of Python,
NumPy and torch (CPU and CUDA) once per rank. The data position is just ``step``: batches are
a pure function of (seed, step, rank) (frontier.train.data).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frontier.utils.atomic import atomic_file


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
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def restore_rng(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])


def rng_file(directory: Path, rank: int) -> Path:
    return directory / "rng" / f"rank_{rank:05d}.json"


def write_rng(directory: Path, rank: int) -> None:
    path = rng_file(directory, rank)
    with atomic_file(path) as f:
        json.dump(capture_rng(), f)


def read_rng(directory: Path, rank: int) -> dict[str, Any] | None:
    path = rng_file(directory, rank)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
