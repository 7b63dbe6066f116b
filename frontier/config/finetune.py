"""Schema of the LoRA fine-tune stage: the adapter, the run's budget and the demo data (docstring -> body pairs).

The run's engine (precision, ZeRO stage, clipping, activation checkpointing, compile, NaN guard,
alerts, monitoring) is the engine: section, shared with train; the AdamW settings and the schedule's
shape are the optimizer: and schedule: sections, with the peak learning rate, weight decay and
warmup given here. Nothing is read from the train: section: the budget below is finetune's own,
its batch keys the same type as train's (BatchConfig, so micro_batch_size: auto works here too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from frontier.config.engine import MOVED_TO_ENGINE
from frontier.config.fields import bounds
from frontier.config.train import BatchConfig, check_resume


@dataclass
class FinetuneConfig(BatchConfig):
    """The fine-tune: its adapter, its budget and its demo data (the batch keys come first, from BatchConfig)."""

    # finetune never had the engine keys; a user looking for them here is told where they are
    MOVED: ClassVar[dict[str, str]] = MOVED_TO_ENGINE

    # the batch: BatchConfig's keys, with a fine-tune's own default micro-batch
    micro_batch_size: int | Literal["auto"] = field(default=8, metadata=bounds(ge=1))
    # the adapter (peft.LoraConfig)
    r: int = field(default=8, metadata=bounds(ge=1))
    alpha: float = field(default=16.0, metadata=bounds(gt=0))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    quantize: Literal["none", "4bit", "8bit"] = "none"  # QLoRA base through bitsandbytes (CUDA only)
    # the run
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    warmup_steps: int = field(default=10, metadata=bounds(ge=0))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    max_steps: int = field(default=100, metadata=bounds(ge=1))
    max_seq_len: int | None = field(default=None, metadata=bounds(ge=2))  # None: the model's context
    eval_every: int = field(default=25, metadata=bounds(ge=0))  # held-out loss every n steps; 0: at the end only
    log_every: int = field(default=10, metadata=bounds(ge=1))
    checkpoint_every: int = field(default=0, metadata=bounds(ge=0))  # 0: at the end (and on a stop signal)
    resume: str = "auto"  # auto | none | a checkpoint directory
    # the demo data (frontier.finetune.sft_data)
    heldout_fraction: float = field(default=0.1, metadata=bounds(gt=0, lt=1))
    max_pairs: int | None = field(default=4000, metadata=bounds(ge=2))
    min_response_chars: int = field(default=16, metadata=bounds(ge=1))
    max_response_chars: int = field(default=1500, metadata=bounds(ge=1))
    max_prompt_chars: int = field(default=1500, metadata=bounds(ge=1))

    def validate(self) -> None:
        super().validate()
        check_resume(self.resume)
        if not self.target_modules:
            raise ValueError("target_modules: expected at least one module name (e.g. q_proj, v_proj)")
        if self.min_response_chars > self.max_response_chars:
            raise ValueError(
                f"min_response_chars: {self.min_response_chars} exceeds max_response_chars={self.max_response_chars}"
            )
