"""Schema of the LoRA fine-tune stage and of its demo data (docstring -> body pairs).

The run itself uses the train section's engine settings (precision, ZeRO stage, grad clipping,
NaN guard, alerts, monitoring) and the optimizer section's AdamW settings; the fields here are
what differs for a fine-tune: the adapter, the step budget, the learning rate and its warmup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds


@dataclass
class FinetuneConfig:
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
    micro_batch_size: int = field(default=8, metadata=bounds(ge=1))
    grad_accum_steps: int = field(default=1, metadata=bounds(ge=1))
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
        if not self.target_modules:
            raise ValueError("target_modules: expected at least one module name (e.g. q_proj, v_proj)")
        if self.min_response_chars > self.max_response_chars:
            raise ValueError(
                f"min_response_chars: {self.min_response_chars} exceeds max_response_chars={self.max_response_chars}"
            )
