"""DPO losses against their formulas computed by hand (math on floats, not torch), and the
sequence log-probs of an AudioLM's delayed targets."""

import math

import pytest
import torch

from aurora.losses.dpo import SequenceLogps, preference_loss, preference_metrics, sequence_logps
from aurora.models.audio_lm import IGNORE_INDEX, delayed_targets

# Three pairs: policy and reference summed log-probs, and token counts.
POLICY_CHOSEN = [-10.0, -30.0, -7.5]
POLICY_REJECTED = [-12.0, -25.0, -9.0]
REF_CHOSEN = [-11.0, -28.0, -8.0]
REF_REJECTED = [-11.5, -27.0, -8.0]
CHOSEN_TOKENS = [8.0, 20.0, 5.0]
REJECTED_TOKENS = [10.0, 16.0, 6.0]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def by_hand(loss_type: str, beta: float, eps: float = 0.0, rpo_alpha: float = 0.0) -> list[float]:
    out = []
    for pc, pr, rc, rr, nc, nr in zip(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_TOKENS,
                                      REJECTED_TOKENS):
        delta = (pc - rc) - (pr - rr)
        if loss_type == "sigmoid":
            loss = -log_sigmoid(beta * delta)
        elif loss_type == "hinge":
            loss = max(0.0, 1 - beta * delta)
        elif loss_type == "ipo":
            loss = ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2
        else:
            loss = (-(1 - eps) * log_sigmoid(beta * delta) + eps * log_sigmoid(-beta * delta)) / (1 - 2 * eps)
        out.append(loss + rpo_alpha * (-pc / nc))
    return out


def _loss(loss_type: str, beta: float, **kwargs):
    chosen = SequenceLogps(torch.tensor(POLICY_CHOSEN), torch.tensor(CHOSEN_TOKENS))
    rejected = SequenceLogps(torch.tensor(POLICY_REJECTED), torch.tensor(REJECTED_TOKENS))
    return preference_loss(chosen, rejected, torch.tensor(REF_CHOSEN), torch.tensor(REF_REJECTED), beta, loss_type,
                           **kwargs), chosen, rejected


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_each_loss_type_is_its_formula(loss_type, beta):
    eps = 0.2 if loss_type == "robust" else 0.0
    result, _, _ = _loss(loss_type, beta, label_smoothing=eps)
    assert result.loss.tolist() == pytest.approx(by_hand(loss_type, beta, eps), rel=1e-6)


def test_hinge_is_zero_past_the_margin():
    """At beta 2, pair 0 (delta 1.5) is past the margin 1/beta; pair 1 (delta -4) is not."""
    result, _, _ = _loss("hinge", beta=2.0)
    assert result.loss[0].item() == 0.0 and result.loss[1].item() > 0


def test_robust_without_smoothing_is_sigmoid():
    assert _loss("robust", 0.1)[0].loss.tolist() == pytest.approx(_loss("sigmoid", 0.1)[0].loss.tolist())


def test_rpo_adds_the_chosen_nll_per_token():
    result, _, _ = _loss("sigmoid", 0.1, rpo_alpha=0.5)
    assert result.loss.tolist() == pytest.approx(by_hand("sigmoid", 0.1, rpo_alpha=0.5), rel=1e-6)


def test_rewards_and_metrics_are_trls():
    beta = 0.1
    result, chosen, rejected = _loss("sigmoid", beta)
    chosen_rewards = [beta * (pc - rc) for pc, rc in zip(POLICY_CHOSEN, REF_CHOSEN)]
    rejected_rewards = [beta * (pr - rr) for pr, rr in zip(POLICY_REJECTED, REF_REJECTED)]
    metrics = {k: v.item() for k, v in preference_metrics(result, chosen, rejected).items()}
    margins = [c - r for c, r in zip(chosen_rewards, rejected_rewards)]
    assert metrics == pytest.approx({
        "rewards/chosen": sum(chosen_rewards) / 3, "rewards/rejected": sum(rejected_rewards) / 3,
        "rewards/margins": sum(margins) / 3, "rewards/accuracies": sum(m > 0 for m in margins) / 3,
        "logps/chosen": sum(POLICY_CHOSEN) / 3, "logps/rejected": sum(POLICY_REJECTED) / 3,
    })
    assert not result.chosen_rewards.requires_grad


def test_gradients_flow_to_the_policy_only():
    chosen = SequenceLogps(torch.tensor(POLICY_CHOSEN, requires_grad=True), torch.tensor(CHOSEN_TOKENS))
    rejected = SequenceLogps(torch.tensor(POLICY_REJECTED, requires_grad=True), torch.tensor(REJECTED_TOKENS))
    beta = 0.1
    preference_loss(chosen, rejected, torch.tensor(REF_CHOSEN), torch.tensor(REF_REJECTED), beta).loss.sum().backward()
    # d/d(chosen) of -log sigmoid(beta delta) = -beta * sigmoid(-beta delta); the rejected side has the opposite sign
    deltas = [(pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)]
    expected = [-beta / (1 + math.exp(beta * d)) for d in deltas]
    assert chosen.logps.grad.tolist() == pytest.approx(expected, rel=1e-6)
    assert rejected.logps.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-6)


@pytest.mark.parametrize("bad, message", [({"beta": 0.0}, "beta=0.0 must be > 0"),
                                          ({"label_smoothing": 0.5}, r"label_smoothing=0.5 must be in \[0, 0.5\)")])
def test_bad_settings_are_refused(bad, message):
    kwargs = {"beta": 0.1, **bad}
    beta = kwargs.pop("beta")
    with pytest.raises(ValueError, match=message):
        _loss("robust", beta, **kwargs)


def test_sequence_logps_sums_the_valid_tokens_of_each_sequence():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    targets = torch.randint(0, 7, (2, 3, 5))
    targets[0, 1, 2:] = IGNORE_INDEX
    targets[1, :, 0] = IGNORE_INDEX
    result = sequence_logps(logits, targets)
    log_probs = logits.log_softmax(-1)
    for b in range(2):
        total, count = 0.0, 0
        for k in range(3):
            for s in range(5):
                if targets[b, k, s] != IGNORE_INDEX:
                    total += log_probs[b, k, s, targets[b, k, s]].item()
                    count += 1
        assert result.logps[b].item() == pytest.approx(total, rel=1e-5)
        assert result.tokens[b].item() == count


def test_delayed_targets_hold_n_q_codes_per_real_frame():
    """K codebooks of L real frames are K * L targets, whatever the delay pattern's layout and
    the padding beyond L: nothing of the padding or the pattern's empty slots is scored."""
    K, T, special = 4, 9, 256
    codes = torch.randint(0, 256, (3, K, T))
    lengths = torch.tensor([9, 5, 1])
    targets = delayed_targets(codes, lengths, special)
    assert targets.shape == (3, K, T + K - 1)
    assert (targets != IGNORE_INDEX).sum(dim=(1, 2)).tolist() == [K * 9, K * 5, K * 1]
    for b, length in enumerate(lengths.tolist()):
        for k in range(K):  # codebook k of frame t sits at position t + k
            assert targets[b, k, k: k + length].tolist() == codes[b, k, :length].tolist()
