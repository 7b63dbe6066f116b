"""DPO and ORPO as a loss module on the training step's contract: forward returns the SUM over its pairs.

The step (frontier.train.engine.step) divides the summed loss of a global batch by its `num_targets`, which a
PreferenceBatch counts in pairs: the result is the mean per-pair loss over the global batch, whatever the
micro-batch split or rank count. Chosen and rejected of a batch's pairs run in one forward (rows [chosen...,
rejected...]); a row's log-probability is the sum of its completion tokens' log-probs (the prompt masked).

  DPO (sigmoid, label smoothing 0):  -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
      rewards beta * (pi - ref); the reference log-probs come with the batch (computed once, cached).
  ORPO (Hong et al. 2024):  NLL_c - lambda * logsigmoid(log_odds_c - log_odds_r)
      log_odds = m - log(1 - exp(m)), m a completion's mean token log-prob; rewards lambda * m (as TRL logs them).
      NLL_c by orpo_nll: "response" (the paper's L_SFT): the chosen completion's mean token NLL, per pair;
      "sequence" (TRL's ORPOTrainer): the token NLL of prompt + chosen completion (every token after the row's
      first), averaged over all those tokens of the forward's real pairs: each pair's NLL term is its summed
      token NLL times (pairs / tokens), so the sum over pairs is the forward's pooled mean times its pair count.
      lambda is TRL's ORPOConfig.beta.
Margins are rewards_c - rewards_r; accuracy is margin > 0.

The token log-probs come from the LM's logits (log-softmax in fp32), or, with kernels.fused_linear_cross_entropy,
from the fused head + loss per token (reduction "none": no (2B, T, V) logits tensor).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frontier.config.kernels import KernelsConfig
from frontier.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
from frontier.model.loss import IGNORE_INDEX, fused_head_softcap

STATS = ("pairs", "loss", "rewards_chosen", "rewards_rejected", "margins", "accuracy")


def dpo_terms(
    pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) each -> per-pair loss, chosen reward, rejected reward (rewards detached)."""
    logits = (pi_c - ref_c) - (pi_r - ref_r)
    loss = -F.logsigmoid(beta * logits)
    return loss, (beta * (pi_c - ref_c)).detach(), (beta * (pi_r - ref_r)).detach()


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p (< 0): log p - log(1 - exp(log p)); expm1 keeps it exact near p = 0."""
    return mean_logp - torch.log(-torch.expm1(mean_logp))


def orpo_terms(
    sum_c: torch.Tensor, sum_r: torch.Tensor, n_c: torch.Tensor, n_r: torch.Tensor, lam: float,
    nll: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Summed completion log-probs and token counts, (B,) each -> per-pair loss, chosen and rejected rewards.
    `nll` (B,): each pair's NLL term; None: the chosen completion's mean token NLL (the paper's)."""
    m_c, m_r = sum_c / n_c.clamp(min=1), sum_r / n_r.clamp(min=1)
    ratio = F.logsigmoid(log_odds(m_c) - log_odds(m_r))
    loss = (-m_c if nll is None else nll) - lam * ratio
    return loss, (lam * m_c).detach(), (lam * m_r).detach()


def pooled_nll(seq_sum_c: torch.Tensor, seq_n_c: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """orpo_nll "sequence": the chosen rows' summed log-probs and token counts (B,), pair weights (B,) -> each
    pair's NLL term, -sum * (real pairs / real tokens): weighted by `weight`, they add up to the pairs' pooled
    token NLL times their count (TRL's cross-entropy mean over the forward's chosen rows)."""
    w = weight.to(seq_sum_c.dtype)
    return -seq_sum_c * (w.sum() / (w * seq_n_c).sum().clamp(min=1))


def sequence_targets(input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(R, T) rows of a PreferenceBatch -> targets that score the prompt too: before a row's first completion
    target, position j predicts input_ids[j + 1] (the prompt's tokens after its first); from there on, the row's
    own targets (its completion, then padding). Every row has a completion target (read_pairs keeps >= 1)."""
    learned = targets != IGNORE_INDEX
    first = learned.to(torch.int8).argmax(dim=1, keepdim=True)  # (R, 1) the first completion target's position
    positions = torch.arange(targets.shape[1], device=targets.device)  # (T,)
    following = torch.cat((input_ids[:, 1:], input_ids[:, -1:]), dim=1)  # (R, T) the next input token
    return torch.where(positions < first, following, targets)


def token_logp_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(R, T, V) logits, (R, T) targets -> the targets' log-probs (R, T) fp32, 0 where IGNORE_INDEX."""
    mask = targets != IGNORE_INDEX
    logits = logits.float()
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (R, T)
    return (picked - torch.logsumexp(logits, dim=-1)) * mask


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, T, V) logits, (R, T) targets -> per-row sum of the targets' log-probs (R,) fp32 and counts (R,)."""
    return token_logp_rows(logits, targets).sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


class PreferenceLoss(nn.Module):
    """Wraps a causal LM (`.lm`, what is exported); forward -> the summed per-pair loss of a PreferenceBatch.

    Each forward adds its batch's figures (STATS, sums over its real pairs) to `tally[mode]` (mode "train" or
    "eval", by `self.training`) as a device tensor; the stage reads and clears them (no host sync here)."""

    def __init__(
        self, lm: Any, loss: str, beta: float, orpo_lambda: float, kernels: KernelsConfig | None = None,
        orpo_nll: str = "response",
    ) -> None:  # fmt: skip
        super().__init__()
        if loss not in ("dpo", "orpo"):
            raise ValueError(f"loss: {loss!r}; expected dpo or orpo")
        if orpo_nll not in ("response", "sequence"):
            raise ValueError(f"orpo_nll: {orpo_nll!r}; expected response or sequence")
        kernels = kernels or KernelsConfig()
        self.lm = lm
        # kernels.fused_linear_cross_entropy: the token log-probs come from the fused head + loss (no (2B, T, V)
        # logits); the wiring's ZeRO-3 setup reads `fused` and head_weight() as it does CausalLMWithLoss's
        self.fused = kernels.fused_linear_cross_entropy
        self.impl = kernels.cross_entropy
        self.softcap = fused_head_softcap(lm) if self.fused else None  # refused here, at build, if not plain
        self.kind = loss
        self.beta = beta
        self.orpo_lambda = orpo_lambda
        self.orpo_nll = orpo_nll
        self.tally: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}

    def head_weight(self) -> nn.Parameter:
        return self.lm.get_output_embeddings().weight

    def head_bias(self) -> nn.Parameter | None:
        return self.lm.get_output_embeddings().bias

    def sequence_logps(self, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, T) rows -> the sum of each row's learned targets' log-probs (R,) fp32, and their counts (R,)."""
        return self.position_logps(input_ids, targets).sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)

    def position_logps(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(R, T) rows -> each target's log-prob (R, T) fp32, 0 where IGNORE_INDEX."""
        if not self.fused:
            logits = self.lm(input_ids=input_ids, use_cache=False).logits  # (R, T, V)
            return token_logp_rows(logits, targets)
        hidden = self.lm.base_model(input_ids=input_ids, use_cache=False).last_hidden_state  # (R, T, H)
        nll = fused_linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),  # (R*T, H)
            self.head_weight(),
            targets.reshape(-1),
            bias=self.head_bias(),
            softcap=self.softcap,
            ignore_index=IGNORE_INDEX,
            reduction="none",
            impl=self.impl,
        ).reshape(targets.shape)  # (R, T), 0 where ignored
        return -(nll * (targets != IGNORE_INDEX))

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        weight: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
        return_logps: bool = False,
    ) -> torch.Tensor:
        """input_ids, targets (2B, T): rows [chosen..., rejected...]; weight (B,); ref_logps (2B,) for DPO.
        -> fp32 scalar: sum over pairs of weight * loss (return_logps: the (2B,) row log-probs instead)."""
        pairs = input_ids.shape[0] // 2
        whole = self.kind == "orpo" and self.orpo_nll == "sequence" and weight is not None and not return_logps
        if whole:  # one forward scores the prompt too: the completions' sums and the chosen rows' whole ones
            full = sequence_targets(input_ids, targets)
            logp = self.position_logps(input_ids, full)  # (2B, T)
            learned = targets != IGNORE_INDEX
            sums, counts = (logp * learned).sum(dim=1), learned.sum(dim=1)
            nll = pooled_nll(logp[:pairs].sum(dim=1), (full[:pairs] != IGNORE_INDEX).sum(dim=1), weight)
        else:
            sums, counts = self.sequence_logps(input_ids, targets)
            nll = None
        if return_logps:
            return sums
        if weight is None:
            # bare rows, not a PreferenceBatch (which always carries its pair weights): micro_batch_size auto
            # measures a sample's memory this way (frontier.train.batches.batch_size); the same graph, an NLL sum
            return -sums.sum()
        if self.kind == "dpo":
            if ref_logps is None:
                raise ValueError("DPO needs the reference log-probabilities in the batch (ref_logps)")
            ref = ref_logps.to(sums.dtype)
            loss, r_c, r_r = dpo_terms(sums[:pairs], sums[pairs:], ref[:pairs], ref[pairs:], self.beta)
        else:
            loss, r_c, r_r = orpo_terms(sums[:pairs], sums[pairs:], counts[:pairs], counts[pairs:], self.orpo_lambda,
                                        nll)  # fmt: skip
        w = weight.to(loss.dtype)
        total = (loss * w).sum()
        margins = r_c - r_r
        row = torch.stack([w.sum(), total.detach(), (r_c * w).sum(), (r_r * w).sum(), (margins * w).sum(),
                           ((margins > 0).to(w.dtype) * w).sum()]).double()  # fmt: skip
        self.tally["train" if self.training else "eval"].append(row)
        return total


def summarize(rows: list[torch.Tensor]) -> dict[str, float]:
    """Tally rows (sums) -> means per pair: loss, rewards_chosen, rewards_rejected, margins, accuracy; pairs."""
    if not rows:
        return {}
    total = torch.stack(rows).sum(dim=0).tolist()
    n = max(total[0], 1.0)
    return {"pairs": int(total[0]), **{k: v / n for k, v in zip(STATS[1:], total[1:])}}
