"""Rewards that rank an LM's samples for preference pairs (``data_prep.make_pairs --reward``).

A reward scores one generated clip against its prompt; higher is better. It gets the generated
audio [T], the sample rate, the prompt clip's json (its caption and, for the synthetic corpus,
its generator parameters) and the prompt clip's real audio (its tokens decoded by the codec).
Adding one is adding a function to ``REWARDS``.
"""

from typing import Callable

import torch

from aurora.config import ConfigError
from aurora.metrics.caption_match import caption_match
from aurora.metrics.codec_quality import mel_distance

Reward = Callable[[torch.Tensor, int, dict, torch.Tensor], float]


def mel_distance_reward(audio: torch.Tensor, sample_rate: int, meta: dict, real: torch.Tensor) -> float:
    """Minus DAC's multi-scale mel distance (aurora.metrics.codec_quality) to the real clip,
    over the length both have."""
    n = min(audio.shape[-1], real.shape[-1])
    return -mel_distance(real[..., :n].reshape(1, 1, n), audio[..., :n].reshape(1, 1, n), sample_rate).item()


def caption_match_reward(audio: torch.Tensor, sample_rate: int, meta: dict, real: torch.Tensor) -> float:
    """The clip's match with a synthetic caption's parameters (aurora.metrics.caption_match)."""
    if "kind" not in meta:
        raise ConfigError(f"--reward caption_match scores clips of the synthetic corpus (data_prep.synth), whose json "
                          f"holds the generator parameters; clip {meta.get('text', '')[:40]!r} has none: use "
                          f"--reward mel_distance")
    return caption_match(audio, sample_rate, meta)


REWARDS: dict[str, Reward] = {"mel_distance": mel_distance_reward, "caption_match": caption_match_reward}


def get_reward(name: str) -> Reward:
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; available: {', '.join(sorted(REWARDS))}")
    return REWARDS[name]
