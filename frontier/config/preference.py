"""Schema of the preference stage (DPO, ORPO): the method, adapter and run budget as finetune's, plus the loss.

The keys that set up the model and the run have finetune's names, meanings and bounds (method full/lora/qlora,
quantize, the LoRA adapter, lr, warmup, max_steps, the batch keys of BatchConfig, checkpoints, resume), so
frontier.finetune.adapter and the wiring read this section as they read finetune:. finetune's data keys
(train_on, packing, the demo-data keys) have no meaning here and are not repeated. A micro-batch counts PAIRS
(each runs as two sequences, chosen and rejected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds
from frontier.config.finetune import AdaptationConfig

LOSSES = ("dpo", "orpo")
ORPO_NLL = ("response", "sequence")


@dataclass
class PreferenceConfig(AdaptationConfig):
    """DPO (sigmoid loss against a reference) or ORPO (no reference) on prompt/chosen/rejected records."""

    # AdaptationConfig's keys, with a preference run's own defaults
    micro_batch_size: int | Literal["auto"] = field(default=4, metadata=bounds(ge=1))  # pairs
    # the demo's tiny model with a LoRA adapter, as finetune's lr; a full-weight DPO of a 7B model wants ~5e-7
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    warmup_steps: int = field(default=0, metadata=bounds(ge=0))
    max_steps: int = field(default=50, metadata=bounds(ge=1))
    # the loss
    loss: Literal["dpo", "orpo"] = "dpo"
    # DPO: the strength of the KL penalty towards the reference (rewards are beta * (log pi - log ref))
    beta: float = field(default=0.1, metadata=bounds(gt=0))
    # ORPO: the weight (the paper's lambda, TRL's ORPOConfig.beta) of the odds-ratio term next to the NLL term
    orpo_lambda: float = field(default=0.1, metadata=bounds(gt=0))
    # ORPO: what the NLL term scores. response (the paper, Hong et al. 2024): each pair's mean token NLL of its
    # chosen completion, averaged over the pairs. sequence (TRL's ORPOTrainer): the token NLL of prompt + chosen
    # completion, averaged over all those tokens of a micro-batch (longer pairs weigh more; the micro-batches'
    # means then averaged). The odds-ratio term and the rewards are the same either way.
    orpo_nll: Literal["response", "sequence"] = "response"
    # the pipeline's demo pairs (frontier.finetune.preference_demo: a docstring, its whole body chosen, the body's
    # first line rejected), at most this many from the SFT data's train and held-out splits
    demo_train_pairs: int = field(default=400, metadata=bounds(ge=1))
    demo_heldout_pairs: int = field(default=64, metadata=bounds(ge=1))
    demo_max_prompt_chars: int = field(default=200, metadata=bounds(ge=1))  # prompts that leave room in the window

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES:  # the Literal is checked by the loader; this guards direct construction
            raise ValueError(f"loss: {self.loss!r}; expected one of {', '.join(LOSSES)}")
        if self.orpo_nll not in ORPO_NLL:  # likewise
            raise ValueError(f"orpo_nll: {self.orpo_nll!r}; expected one of {', '.join(ORPO_NLL)}")
