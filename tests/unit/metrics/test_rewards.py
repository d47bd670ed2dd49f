"""The rewards that rank samples, on clips the synthetic corpus itself renders: a clip scores
higher against its own caption than against another kind's, and the kind classifier names the
kinds it was built for."""

import collections

import pytest
import torch

from aurora.config import ConfigError
from aurora.metrics.caption_match import KINDS, caption_match, classify
from aurora.metrics.rewards import get_reward
from data_prep.synth import make_clip

RATE = 16000


@pytest.fixture(scope="module")
def clips():
    """60 clips of 1-2 s (at least 2 hits in a hits clip), their parameters."""
    return [(torch.from_numpy(signal), meta) for signal, meta in (make_clip(11, i, RATE, 1.0, 2.0) for i in range(60))]


def test_the_classifier_names_the_synthetic_kinds(clips):
    confusion = collections.Counter((meta["kind"], classify(audio, RATE)) for audio, meta in clips)
    correct = sum(n for (true, said), n in confusion.items() if true == said)
    assert {kind for kind, _ in confusion} == set(KINDS)
    assert correct / len(clips) >= 0.9, confusion


def test_a_clip_matches_its_own_caption_better_than_another_kinds(clips):
    own = [caption_match(audio, RATE, meta) for audio, meta in clips]
    other = [caption_match(audio, RATE, next(m for _, m in clips if m["kind"] != meta["kind"])) for audio, meta in clips]
    assert all(0.0 <= score <= 1.0 for score in own + other)
    assert sum(o > x for o, x in zip(own, other)) >= 0.9 * len(clips)
    assert sum(own) / len(own) > 0.8 > 0.3 > sum(other) / len(other)


def test_pitch_counts_for_a_tone_of_the_right_kind(clips):
    """The same tone against its parameters with the pitch an octave and a half away: the kind
    still matches, the pitch half of the score does not."""
    audio, meta = next((a, m) for a, m in clips if m["kind"] == "tone" and classify(a, RATE) == "tone")
    detuned = {**meta, "frequencies": [f * 2.83 for f in meta["frequencies"]]}
    assert caption_match(audio, RATE, meta) > 0.9 and caption_match(audio, RATE, detuned) == pytest.approx(0.5)


def test_rumble_and_dc_offset_under_the_lowest_note_are_not_a_pitch(clips):
    """A codec early in training adds a DC offset and a strong 8 Hz rumble: the pitch read is the
    tone's still (without the floor, the rumble's bin is the strongest peak)."""
    audio, meta = next((a, m) for a, m in clips if m["kind"] == "tone" and caption_match(a, RATE, m) > 0.9)
    t = torch.arange(audio.numel()) / RATE
    rumbling = audio + 0.1 + 2 * audio.abs().max() * torch.sin(2 * torch.pi * 8 * t)
    assert caption_match(rumbling, RATE, meta) == pytest.approx(caption_match(audio, RATE, meta), abs=0.05)


def test_mel_distance_prefers_the_real_clip_and_caption_match_needs_parameters(clips):
    reward = get_reward("mel_distance")
    audio, meta = clips[0][0].float(), clips[0][1]
    noisy = audio + 0.3 * torch.randn_like(audio)
    assert reward(audio, RATE, meta, audio) == pytest.approx(0.0, abs=1e-6)
    assert reward(noisy, RATE, meta, audio) < -0.5
    with pytest.raises(ConfigError, match="--reward caption_match scores clips of the synthetic corpus"):
        get_reward("caption_match")(audio, RATE, {"text": "speech"}, audio)
    with pytest.raises(ConfigError, match="unknown reward 'bleu'; available: caption_match, mel_distance"):
        get_reward("bleu")
