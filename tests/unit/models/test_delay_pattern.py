import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora.models.delay_pattern import (
    build_delay_pattern,
    delay_pattern_mask,
    revert_delay_pattern,
)

# (B, K, T, codebook size, seed)
shapes = st.tuples(
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(0, 20),
    st.integers(1, 2048),
    st.integers(0, 2**31 - 1),
)


def random_codes(B, K, T, card, seed):
    return torch.randint(0, card, (B, K, T), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=200, deadline=None)
@given(shapes)
def test_revert_inverts_build(shape):
    B, K, T, card, seed = shape
    codes = random_codes(B, K, T, card, seed)
    delayed = build_delay_pattern(codes, special_token=card)
    assert delayed.shape == (B, K, T + K - 1)
    assert torch.equal(revert_delay_pattern(delayed), codes)


@settings(max_examples=200, deadline=None)
@given(shapes)
def test_mask_marks_exactly_the_real_codes(shape):
    B, K, T, card, seed = shape
    # Codes that never equal the special token, so "is special" tells where the real codes are.
    delayed = build_delay_pattern(random_codes(B, K, T, card, seed), special_token=card)
    mask = delay_pattern_mask(K, T)
    assert mask.shape == (K, T + K - 1) and mask.dtype == torch.bool
    assert torch.equal(delayed != card, mask.expand(B, K, T + K - 1))
    assert mask.sum() == K * T


def test_hand_written_example():
    codes = torch.tensor([[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]])
    S = 99
    expected = torch.tensor(
        [
            [
                [1, 2, 3, 4, S, S],
                [S, 5, 6, 7, 8, S],
                [S, S, 9, 10, 11, 12],
            ]
        ]
    )
    assert torch.equal(build_delay_pattern(codes, special_token=S), expected)
    assert torch.equal(revert_delay_pattern(expected), codes)
    assert torch.equal(delay_pattern_mask(3, 4), expected[0] != S)
