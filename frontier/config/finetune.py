"""Schema of the fine-tune stage: the method (full, LoRA, QLoRA), the adapter, the run's budget and the demo data
(docstring -> body pairs).

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
class AdaptationConfig(BatchConfig):
    """What every stage that adapts a model shares (finetune:, preference:): the method, the adapter and the run's
    budget; the batch keys come first, from BatchConfig."""

    # a stage never had the engine keys; a user looking for them here is told where they are
    MOVED: ClassVar[dict[str, str]] = MOVED_TO_ENGINE

    # the batch: BatchConfig's keys, with an adaptation's own default micro-batch
    micro_batch_size: int | Literal["auto"] = field(default=8, metadata=bounds(ge=1))
    # full: every parameter trains, a full model is exported; lora: an adapter on the frozen base;
    # qlora: an adapter on a frozen base quantized by bitsandbytes (quantize: 4bit NF4 or 8bit)
    method: Literal["full", "lora", "qlora"] = "lora"
    quantize: Literal["none", "4bit", "8bit"] = "none"  # qlora only
    # the adapter (peft.LoraConfig), for lora and qlora
    r: int = field(default=8, metadata=bounds(ge=1))
    alpha: float = field(default=16.0, metadata=bounds(gt=0))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    # all-linear: peft's choice, every linear layer of the blocks (not the output head), so fused projections
    # (Phi-3's qkv_proj, gate_up_proj) are covered without naming them; or a list of module names
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
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

    def validate(self) -> None:
        super().validate()
        check_resume(self.resume)
        if not self.target_modules:
            raise ValueError("target_modules: expected 'all-linear' or at least one module name (e.g. q_proj, v_proj)")
        if self.method == "qlora" and self.quantize == "none":
            raise ValueError("quantize: method qlora quantizes the base: expected quantize 4bit (NF4) or 8bit")
        if self.method != "qlora" and self.quantize != "none":
            raise ValueError(
                f"quantize: {self.quantize!r} applies to method qlora only (method is {self.method!r}); "
                "set method: qlora, or quantize: none"
            )

    @property
    def adapter(self) -> bool:
        """Whether the run trains a LoRA adapter on a frozen base (lora, qlora) rather than every weight (full)."""
        return self.method != "full"


@dataclass
class FinetuneConfig(AdaptationConfig):
    """The fine-tune: AdaptationConfig's method, adapter and budget; what of a record is learned, packing, and the
    demo data."""

    # pack the training examples into windows of max_seq_len (frontier.finetune.packing): positions restart and
    # attention is masked per example; false: right-pad each micro-batch to its longest example
    packing: bool = False
    # what of a chat record is learned (frontier.finetune.sft_formats): assistant (every assistant turn),
    # last_assistant (the last one), all (every token); each turn closed by the template's end-of-turn token
    train_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    # the demo data (frontier.finetune.sft_data)
    heldout_fraction: float = field(default=0.1, metadata=bounds(gt=0, lt=1))
    max_pairs: int | None = field(default=4000, metadata=bounds(ge=2))
    min_response_chars: int = field(default=16, metadata=bounds(ge=1))
    max_response_chars: int = field(default=1500, metadata=bounds(ge=1))
    max_prompt_chars: int = field(default=1500, metadata=bounds(ge=1))

    def validate(self) -> None:
        super().validate()
        if self.min_response_chars > self.max_response_chars:
            raise ValueError(
                f"min_response_chars: {self.min_response_chars} exceeds max_response_chars={self.max_response_chars}"
            )
