"""Direct preference optimisation losses, with TRL's definitions (``DPOTrainer``, v0.29 on).

Inputs are per-pair sequence log-probs: the sum of the log-probs of a completion's valid tokens
under the policy and under the frozen reference. With

    chosen_logratio   = log pi(y_w | x) - log pi_ref(y_w | x)
    rejected_logratio = log pi(y_l | x) - log pi_ref(y_l | x)
    delta             = chosen_logratio - rejected_logratio

the per-pair losses are

    sigmoid  -log sigmoid(beta * delta)                                         (DPO)
    hinge    relu(1 - beta * delta)                                             (SLiC)
    ipo      (delta' - 1 / (2 beta))^2, delta' from log-ratios divided by each
             completion's token count                                           (IPO; beta is tau)
    robust   (-(1 - eps) log sigmoid(beta delta) + eps log sigmoid(-beta delta)) / (1 - 2 eps)

and ``rpo_alpha`` > 0 adds alpha times the policy's mean negative log-likelihood per token of the
chosen completions (RPO). Rewards are ``beta * logratio``, the implicit rewards TRL logs.
"""

from enum import Enum
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class DPOLossType(str, Enum):
    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"
    robust = "robust"


class SequenceLogps(NamedTuple):
    """Summed log-probs of a batch of completions and how many tokens each sum holds."""

    logps: Tensor
    """[B] sum over the valid tokens of log p(token)."""
    tokens: Tensor
    """[B] number of valid tokens (float)."""


class PreferenceLoss(NamedTuple):
    loss: Tensor
    """[B] per-pair loss (the RPO term included)."""
    chosen_rewards: Tensor
    """[B] beta * chosen log-ratio, detached."""
    rejected_rewards: Tensor
    """[B] beta * rejected log-ratio, detached."""


def sequence_logps(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> SequenceLogps:
    """Per-sequence sums of log p(target) for logits [B, ..., V] and targets [B, ...] (every
    position but the batch's is summed; ``ignore_index`` marks positions outside the completion:
    its prompt, padding, a delay pattern's empty slots). In fp32."""
    valid = targets != ignore_index
    token_logps = -F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=ignore_index,
                                   reduction="none").view(targets.shape)
    return SequenceLogps(token_logps.flatten(1).sum(1), valid.flatten(1).sum(1).float())


def preference_loss(
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: DPOLossType | str = DPOLossType.sigmoid,
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
) -> PreferenceLoss:
    """Per-pair preference losses of the policy's ``chosen``/``rejected`` log-probs against the
    reference's (module docstring). Computed in fp32."""
    loss_type = DPOLossType(loss_type)
    if beta <= 0:
        raise ValueError(f"dpo beta={beta} must be > 0")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo label_smoothing={label_smoothing} must be in [0, 0.5)")
    chosen_logratio = chosen.logps.float() - ref_chosen_logps.float()
    rejected_logratio = rejected.logps.float() - ref_rejected_logps.float()
    delta = chosen_logratio - rejected_logratio
    if loss_type == DPOLossType.sigmoid:
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == DPOLossType.hinge:
        losses = torch.relu(1 - beta * delta)
    elif loss_type == DPOLossType.ipo:
        per_token = chosen_logratio / chosen.tokens.clamp(min=1) - rejected_logratio / rejected.tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        eps = label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    if rpo_alpha > 0:
        losses = losses + rpo_alpha * (-chosen.logps.float() / chosen.tokens.clamp(min=1))
    return PreferenceLoss(losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach())


def preference_metrics(result: PreferenceLoss, chosen: SequenceLogps, rejected: SequenceLogps) -> dict[str, Tensor]:
    """TRL's logged numbers, means over this batch's pairs: ``rewards/{chosen,rejected,
    accuracies,margins}``, ``logps/{chosen,rejected}``."""
    margins = result.chosen_rewards - result.rejected_rewards
    per_pair = {
        "rewards/chosen": result.chosen_rewards,
        "rewards/rejected": result.rejected_rewards,
        "rewards/accuracies": (margins > 0).float(),
        "rewards/margins": margins,
        "logps/chosen": chosen.logps.detach().float(),
        "logps/rejected": rejected.logps.detach().float(),
    }
    return {name: values.mean() for name, values in per_pair.items()}
