"""Schema of the preference stage (DPO, ORPO): the method, adapter and run budget as finetune's, plus the loss.

The keys that set up the model and the run have finetune's names, meanings and bounds (method full/lora/qlora,
quantize, the LoRA adapter, lr, warmup, max_steps, the batch keys of BatchConfig, checkpoints, resume), so
frontier.finetune.adapter and the wiring read this section as they read finetune:. finetune's data keys
(train_on, packing, the demo-data keys) have no meaning here and are not repeated. A micro-batch counts PAIRS
(each runs as two sequences, chosen and rejected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from frontier.config.engine import MOVED_TO_ENGINE
from frontier.config.fields import bounds
from frontier.config.train import BatchConfig, check_resume

LOSSES = ("dpo", "orpo")


@dataclass
class PreferenceConfig(BatchConfig):
    """DPO (sigmoid loss against a reference) or ORPO (no reference) on prompt/chosen/rejected records."""

    MOVED: ClassVar[dict[str, str]] = MOVED_TO_ENGINE

    micro_batch_size: int | Literal["auto"] = field(default=4, metadata=bounds(ge=1))  # pairs
    loss: Literal["dpo", "orpo"] = "dpo"
    # DPO: the strength of the KL penalty towards the reference (rewards are beta * (log pi - log ref))
    beta: float = field(default=0.1, metadata=bounds(gt=0))
    # ORPO: the weight of the odds-ratio term next to the chosen completion's NLL
    orpo_lambda: float = field(default=0.1, metadata=bounds(gt=0))
    # as finetune: (frontier.config.finetune)
    method: Literal["full", "lora", "qlora"] = "lora"
    quantize: Literal["none", "4bit", "8bit"] = "none"
    r: int = field(default=8, metadata=bounds(ge=1))
    alpha: float = field(default=16.0, metadata=bounds(gt=0))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    lr: float = field(default=5e-5, metadata=bounds(gt=0))
    warmup_steps: int = field(default=0, metadata=bounds(ge=0))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    max_steps: int = field(default=50, metadata=bounds(ge=1))
    max_seq_len: int | None = field(default=None, metadata=bounds(ge=2))  # None: the model's context
    eval_every: int = field(default=25, metadata=bounds(ge=0))  # held-out pairs every n steps; 0: at the end only
    log_every: int = field(default=10, metadata=bounds(ge=1))
    checkpoint_every: int = field(default=0, metadata=bounds(ge=0))
    resume: str = "auto"

    def validate(self) -> None:
        super().validate()
        check_resume(self.resume)
        if self.loss not in LOSSES:  # the Literal is checked by the loader; this guards direct construction
            raise ValueError(f"loss: {self.loss!r}; expected one of {', '.join(LOSSES)}")
        if not self.target_modules:
            raise ValueError("target_modules: expected 'all-linear' or at least one module name (e.g. q_proj, v_proj)")
        if self.method == "qlora" and self.quantize == "none":
            raise ValueError("quantize: method qlora quantizes the base: expected quantize 4bit (NF4) or 8bit")
        if self.method != "qlora" and self.quantize != "none":
            raise ValueError(f"quantize: {self.quantize!r} applies to method qlora only (method is {self.method!r})")

    @property
    def adapter(self) -> bool:
        """Whether the run trains a LoRA adapter on a frozen base (lora, qlora) rather than every weight (full)."""
        return self.method != "full"
