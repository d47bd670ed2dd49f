"""Dead-code reset: which rows are replaced, with what, and when."""

import torch

from aurora.config.schema import TrainConfig
from aurora.engines import build_engine
from aurora.tasks.codec.dead_codes import DeadCodeReset


def test_unused_codes_are_replaced_by_lookup_inputs(world_of_one):
    n_q, K, d, every = 2, 8, 4, 3
    engine = build_engine(TrainConfig(), world_of_one)
    codebooks = [torch.nn.Parameter(torch.randn(K, d)) for _ in range(n_q)]
    before = [c.detach().clone() for c in codebooks]
    reset = DeadCodeReset(n_q, K, d, every, seed=0, device=torch.device("cpu"))
    # [B=2, n_q=2, T=4]: stage 0 uses codes 0 and 1 only, stage 1 uses all eight.
    codes = torch.tensor([[[0, 1, 0, 1], [0, 1, 2, 3]], [[1, 0, 1, 0], [4, 5, 6, 7]]])
    inputs = torch.randn(2, n_q, d, 4)
    reset.observe(codes, inputs)

    assert reset.maybe_reset(1, codebooks, engine) == 0  # not a multiple of `every`
    assert all(torch.equal(c, b) for c, b in zip(codebooks, before))
    assert reset.maybe_reset(every, codebooks, engine) == K - 2  # stage 0 used only codes 0 and 1

    assert torch.equal(codebooks[0][:2], before[0][:2])
    assert torch.equal(codebooks[1], before[1])  # stage 1 used every code
    pool = inputs[:, 0].permute(0, 2, 1).reshape(-1, d)  # stage 0's lookup inputs, one row per frame
    for row in codebooks[0][2:]:
        assert (pool == row).all(dim=1).any(), "a replaced code is not one of the lookup inputs"
    # The counts start over: with no new observations, everything is dead at the next check.
    assert reset.maybe_reset(2 * every, codebooks, engine) == n_q * K


def test_reset_raises_usage_of_a_collapsed_codebook(world_of_one):
    """A quantizer whose codes all point one way picks one code for every frame (perplexity 1);
    after one reset from its own lookup inputs, the same frames spread over many codes."""
    from aurora.models.codec import VectorQuantizer, codebook_usage

    torch.manual_seed(0)
    K, d = 64, 4
    vq = VectorQuantizer(8, K, d)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.randn(1, d).expand(K, d))  # every code the same: one wins every frame
    x = torch.randn(4, 8, 50)
    before = vq(x)
    assert codebook_usage(before.codes[:, None], K).item() < 1.5
    reset = DeadCodeReset(1, K, d, every=1, seed=0, device=torch.device("cpu"))
    reset.observe(before.codes[:, None], before.lookup_inputs[:, None])
    replaced = reset.maybe_reset(1, [vq.codebook.weight], build_engine(TrainConfig(), world_of_one))
    assert replaced >= K - 2
    after = codebook_usage(vq(x).codes[:, None], K).item()
    assert after > 20, after


def test_disabled(world_of_one):
    engine = build_engine(TrainConfig(), world_of_one)
    reset = DeadCodeReset(1, 4, 2, every=0, seed=0, device=torch.device("cpu"))
    assert reset.maybe_reset(10, [torch.nn.Parameter(torch.randn(4, 2))], engine) == 0


def test_state_round_trip():
    reset = DeadCodeReset(2, 8, 4, every=3, seed=0, device=torch.device("cpu"))
    reset.observe(torch.zeros(1, 2, 5, dtype=torch.long), torch.randn(1, 2, 4, 5))
    other = DeadCodeReset(2, 8, 4, every=3, seed=0, device=torch.device("cpu"))
    other.load_state_dict(reset.state_dict())
    assert torch.equal(other.counts, reset.counts) and torch.equal(other.pool, reset.pool)
