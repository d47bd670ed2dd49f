import math

import pytest
import torch

from aurora.models.audio_lm import (BOS_ID, PAD_ID, SEP_ID, AudioLM, AudioLMConfig, encode_text, sample,
                                    unconditional_text)
from aurora.models.transformer import TransformerConfig
from tools.bench.sampling_speed import recompute_greedy

CARD = 16
K = 3


def make_model(seed: int = 0) -> AudioLM:
    torch.manual_seed(seed)
    return AudioLM(AudioLMConfig(n_q=K, codebook_size=CARD, max_text_len=12))


def batch(B: int = 2, T: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = encode_text(["a dog barks", "rain"][:B] + ["x"] * max(0, B - 2), 12)
    return text, torch.randint(0, CARD, (B, K, T), generator=g)


def test_encode_text_left_pads_and_truncates():
    tokens = encode_text(["hi", "héllo wörld, long"], max_len=8)
    assert tokens.tolist()[0] == [PAD_ID] * 4 + [BOS_ID, ord("h"), ord("i"), SEP_ID]
    assert tokens.tolist()[1] == [BOS_ID, *"héllo wörld".encode()[:6], SEP_ID]
    assert encode_text([""], 4).tolist() == [[PAD_ID, PAD_ID, BOS_ID, SEP_ID]]


def test_backbone_vocab_must_cover_text_tokens():
    with pytest.raises(ValueError, match="vocab_size"):
        AudioLM(AudioLMConfig(backbone=TransformerConfig(vocab_size=256)))


def test_shapes_and_shard_units():
    model = make_model()
    text, codes = batch(T=6)
    assert model(text, codes).shape == (2, K, 6 + K - 1, CARD)
    assert model.shard_units() == list(model.backbone.layers)


def test_loss_equals_hand_computation():
    model = make_model()
    text, codes = batch(T=5)
    lengths = torch.tensor([5, 2])
    loss, metrics = model.loss(text, codes, lengths)

    # loss() feeds the special token in place of padding frames.
    fed = codes.clone()
    fed[1, :, 2:] = CARD
    with torch.no_grad():
        log_probs = model(text, fed).log_softmax(-1)
    per_q = []
    for k in range(K):
        total, count = 0.0, 0
        for b in range(2):
            for t in range(log_probs.shape[2]):
                frame = t - k  # delayed step t holds codebook k of frame t - k
                if 0 <= frame < lengths[b]:
                    total -= log_probs[b, k, t, codes[b, k, frame]].item()
                    count += 1
        per_q.append(total / count)
        assert metrics[f"ce_q{k}"].item() == pytest.approx(per_q[k], rel=1e-5)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(sum(per_q) / K, rel=1e-5)


def test_padding_frames_do_not_change_the_loss():
    model = make_model()
    text, codes = batch(T=7)
    lengths = torch.tensor([7, 3])
    loss, metrics = model.loss(text, codes, lengths)
    perturbed = codes.clone()
    perturbed[1, :, 3:] = torch.randint(0, CARD, (K, 4))
    loss2, metrics2 = model.loss(text, perturbed, lengths)
    assert loss2.item() == loss.item()
    assert {k: v.item() for k, v in metrics2.items()} == {k: v.item() for k, v in metrics.items()}
    # The real frames do count.
    perturbed[1, :, 2] = (perturbed[1, :, 2] + 1) % CARD
    assert model.loss(text, perturbed, lengths)[0].item() != loss.item()


def test_causality():
    model = make_model()
    text, codes = batch(T=8)
    j = 4
    changed = codes.clone()
    changed[:, :, j] = (changed[:, :, j] + 1) % CARD
    with torch.no_grad():
        before, after = model(text, codes), model(text, changed)
    # Delayed step t is predicted from steps < t; frame j first appears at step j.
    torch.testing.assert_close(after[:, :, : j + 1], before[:, :, : j + 1], rtol=0, atol=0)
    assert not torch.allclose(after[:, :, j + 1], before[:, :, j + 1])


def test_overfits_one_example():
    model = make_model()
    text, codes = batch(B=1, T=8)
    lengths = torch.tensor([8])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss, _ = model.loss(text, codes, lengths)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(CARD), rel=0.1)
    assert loss.item() < 0.1 * first


def test_generate_shape_range_and_determinism():
    model = make_model()
    text, _ = batch()
    out = model.generate(text, 7, top_k=5, generators=seeded(1, 2))
    assert out.shape == (2, K, 7) and out.dtype == torch.long
    assert out.min() >= 0 and out.max() < CARD
    again = model.generate(text, 7, top_k=5, generators=seeded(1, 2))
    assert torch.equal(out, again)
    full = model.generate(text, 7, generators=seeded(3, 4))
    assert full.shape == (2, K, 7) and full.max() < CARD


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_cached_generation_equals_recompute_greedy():
    model = make_model()
    text, _ = batch()
    assert torch.equal(model.generate(text, 6, top_k=1), recompute_greedy(model, text, 6))


def test_guided_generation_equals_two_separate_passes():
    """CFG at scale 3 (conditional and unconditional rows in one batch, one cache) equals
    combining the logits of a conditional and an unconditional pass computed apart."""
    model = make_model()
    text, _ = batch()
    assert torch.equal(model.generate(text, 6, top_k=1, cfg_scale=3.0), recompute_greedy(model, text, 6, 3.0))
    assert not torch.equal(model.generate(text, 6, top_k=1, cfg_scale=3.0), model.generate(text, 6, top_k=1))


def test_cfg_scale_zero_is_sampling_from_the_empty_caption():
    model = make_model()
    text, _ = batch()
    empty = encode_text(["", ""], text.shape[1])
    assert torch.equal(model.generate(text, 6, cfg_scale=0.0, generators=seeded(5, 6)),
                       model.generate(empty, 6, generators=seeded(5, 6)))
    assert torch.equal(unconditional_text(2, text.shape[1]), empty)


def test_a_rows_sample_depends_on_its_own_generator_only():
    """Row 1 sampled in a batch of 3 equals row 1 sampled alone with the same generator seed: so
    a prompt's clip does not depend on how prompts were batched or split across ranks."""
    model = make_model()
    text, _ = batch(B=3)
    together = model.generate(text, 6, generators=seeded(7, 8, 9))
    alone = model.generate(text[1:2], 6, generators=seeded(8))
    assert torch.equal(together[1:2], alone)


def test_top_p_keeps_the_smallest_set_reaching_p():
    """Probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two (0.5 < 0.7 <= 0.8),
    top_p=0.5 keeps the first alone; draws follow the renormalised kept mass."""
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(4000, 4)
    drawn = sample(logits, top_p=0.7, generators=None)
    assert set(drawn.tolist()) == {0, 1}
    assert (drawn == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)
    assert set(sample(logits, top_p=0.5).tolist()) == {0}
    assert set(sample(logits, top_p=1.0).tolist()) == {0, 1, 2, 3}


def test_sample_refuses_a_generator_count_that_is_not_the_batch():
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        sample(torch.zeros(3, 5), generators=seeded(1, 2))