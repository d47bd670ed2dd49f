"""Loss balancer: the gradient it deposits, checked against the EnCodec formula worked out by hand.

The running example: x [2, 3], l1 = (a * x).sum() so g1 = a, with row norms 5 and 5 (n1 = 5),
and l2 = (x ** 2).sum() so g2 = 2x, with row norms 2 and 4 (n2 = 3).
"""

import io
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aurora.losses.balancer import Balancer

A = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 5.0]])
X = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])


def _losses(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"l1": (A * x).sum(), "l2": (x**2).sum()}


def _grad_of(balancer: Balancer, x: torch.Tensor, losses=None) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    surrogate = balancer.surrogate(losses(x) if losses else _losses(x), x)
    surrogate.backward()
    return x.grad, surrogate.detach()


def test_first_step_rescaled_gradient_and_value():
    balancer = Balancer({"l1": 1.0, "l2": 3.0}, total_norm=2.0)
    grad, value = _grad_of(balancer, X)
    # G = 2 * 1/4 * a / 5 + 2 * 3/4 * 2x / 3 = a / 10 + x   (first step: the average is the norm)
    torch.testing.assert_close(grad, A / 10 + X)
    # value = 1 * l1 + 3 * l2 = 1 * 3 + 3 * (1 + 4)
    assert value.item() == pytest.approx(18.0)
    assert balancer.metrics["ratio_l1"].item() == pytest.approx(5 / 8)
    assert balancer.metrics["ratio_l2"].item() == pytest.approx(3 / 8)
    assert balancer.metrics["norm_l2"].item() == pytest.approx(3.0)


def test_without_rescaling_the_gradient_is_the_weighted_sum():
    balancer = Balancer({"l1": 1.0, "l2": 3.0}, rescale_grads=False, total_norm=2.0)
    grad, value = _grad_of(balancer, X)
    torch.testing.assert_close(grad, A + 3 * 2 * X)
    assert value.item() == pytest.approx(18.0)
    assert balancer.metrics["ratio_l1"].item() == pytest.approx(5 / 8)  # norms are still recorded


def test_second_step_uses_the_decayed_sum_over_decayed_count():
    balancer = Balancer({"l1": 1.0, "l2": 3.0}, total_norm=2.0, ema_decay=0.5)
    _grad_of(balancer, X)
    grad, _ = _grad_of(balancer, 2 * X)
    # g2 = 4x now, row norms 4 and 8: n2 = 6; n1 stays 5.
    # ema2 = (0.5 * 3 + 6) / (0.5 + 1) = 5, ema1 = (0.5 * 5 + 5) / 1.5 = 5
    # G = 2 * 1/4 * a / 5 + 2 * 3/4 * (2 * 2x) / 5 = a / 10 + 1.2 x
    torch.testing.assert_close(grad, A / 10 + 1.2 * X)
    assert balancer.metrics["norm_l2"].item() == pytest.approx(5.0)


def test_norm_over_the_whole_tensor_when_not_per_batch_item():
    balancer = Balancer({"l1": 1.0, "l2": 3.0}, total_norm=2.0, per_batch_item=False)
    grad, _ = _grad_of(balancer, X)
    # ||g1|| = sqrt(9 + 16 + 25), ||g2|| = sqrt(4 + 16)
    n1, n2 = 50**0.5, 20**0.5
    torch.testing.assert_close(grad, 2 * 0.25 * A / n1 + 2 * 0.75 * 2 * X / n2)


def test_state_round_trip_resumes_identically():
    weights = {"l1": 1.0, "l2": 3.0}
    first = Balancer(weights, ema_decay=0.9)
    _grad_of(first, X)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)

    resumed = Balancer(weights, ema_decay=0.9)
    resumed.load_state_dict(torch.load(buffer))
    fresh = Balancer(weights, ema_decay=0.9)
    grad_first, _ = _grad_of(first, 3 * X)
    grad_resumed, _ = _grad_of(resumed, 3 * X)
    grad_fresh, _ = _grad_of(fresh, 3 * X)
    assert torch.equal(grad_first, grad_resumed)
    assert not torch.allclose(grad_first, grad_fresh)  # the state did carry something

    with pytest.raises(ValueError, match=r"losses \['mel'\] that are not in the weights"):
        Balancer({"l1": 1.0}).load_state_dict({"norm_sum": {"mel": torch.tensor(1.0)},
                                              "count": {"mel": torch.tensor(1.0)}})


@pytest.mark.parametrize("epsilon", [1e-12, 0.0])
def test_losses_without_gradient_stay_finite(epsilon):
    balancer = Balancer({"l1": 1.0, "l2": 3.0, "zero": 2.0, "const": 2.0}, total_norm=2.0, epsilon=epsilon)

    def losses(x):
        return {**_losses(x), "zero": 0 * x.sum(), "const": torch.tensor(4.0)}

    for _ in range(2):
        grad, value = _grad_of(balancer, X, losses)
        assert torch.isfinite(grad).all()
    # The zero-gradient losses still take their share of the weights: 2 * 1/8 * a/5 + 2 * 3/8 * 2x/3
    torch.testing.assert_close(grad, A / 20 + X / 2)
    assert value.item() == pytest.approx(3 + 3 * 5 + 0 + 2 * 4)
    assert balancer.metrics["ratio_zero"].item() == 0.0


def test_gradient_reaches_the_model_through_its_output():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    inputs = torch.randn(5, 4)
    a, target = torch.randn(5, 3), torch.randn(5, 3)
    weights = {"lin": 2.0, "mse": 1.0}
    balancer = Balancer(weights, total_norm=3.0)

    x = lin(inputs)
    losses = {"lin": (a * x).sum(), "mse": ((x - target) ** 2).mean()}
    commitment = lin.weight.square().sum()  # depends on the model directly: added outside
    (balancer.surrogate(losses, x) + commitment).backward()

    xd = x.detach()
    grads = {"lin": a, "mse": 2 * (xd - target) / xd.numel()}
    G = sum(3.0 * (weights[k] / 3.0) * g / (1e-12 + g.norm(dim=1).mean()) for k, g in grads.items())
    torch.testing.assert_close(lin.weight.grad, G.T @ inputs + 2 * lin.weight.detach())
    torch.testing.assert_close(lin.bias.grad, G.sum(0))


def test_half_precision_output_gets_its_gradient_in_its_dtype():
    balancer = Balancer({"l1": 1.0, "l2": 3.0}, total_norm=2.0)
    grad, value = _grad_of(balancer, X.to(torch.bfloat16))
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), A / 10 + X, rtol=1e-2, atol=1e-2)
    assert value.dtype == torch.float32


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="empty `weights`"):
        Balancer({})
    with pytest.raises(ValueError, match="sum to 0"):
        Balancer({"l1": 0.0})
    balancer = Balancer({"l1": 1.0, "l2": 3.0})
    x = X.clone().requires_grad_()
    with pytest.raises(ValueError, match=r"losses \['adv', 'mel'\] have no weight"):
        balancer.surrogate({**_losses(x), "mel": x.sum(), "adv": x.sum()}, x)
    with pytest.raises(ValueError, match="does not require grad"):
        balancer.surrogate(_losses(X), X)
    with pytest.raises(ValueError, match=r"loss 'l1' has shape \(2, 3\)"):
        balancer.surrogate({"l1": A * x}, x)


def test_world_of_one_matches_single_process():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        grad, _ = _grad_of(Balancer({"l1": 1.0, "l2": 3.0}, total_norm=2.0), X)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(grad, A / 10 + X)


def _two_ranks(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    # Rank 0 has one item whose g2 row norm is 2, rank 1 three items with norm 4: n2 = (2 + 3 * 4) / 4.
    x = X[:1] if rank == 0 else X[1:].repeat(3, 1)
    a = A[:1] if rank == 0 else A[1:].repeat(3, 1)
    x.requires_grad_()
    balancer = Balancer({"l1": 1.0, "l2": 3.0}, total_norm=2.0)
    balancer.surrogate({"l1": (a * x).sum(), "l2": (x**2).sum()}, x).backward()
    torch.save(x.grad, os.path.join(out_dir, f"grad{rank}.pt"))
    dist.destroy_process_group()


def test_norms_are_averaged_over_ranks_by_batch_size():
    with tempfile.TemporaryDirectory() as tmp:
        # fork, not spawn: spawned workers re-import torch, ~20 s on a 2-core machine.
        mp.start_processes(_two_ranks, args=(os.path.join(tmp, "store"), tmp), nprocs=2, start_method="fork")
        grads = [torch.load(os.path.join(tmp, f"grad{r}.pt")) for r in range(2)]
    n1, n2 = 5.0, (2 + 3 * 4) / 4
    torch.testing.assert_close(grads[0], 2 * 0.25 * A[:1] / n1 + 2 * 0.75 * 2 * X[:1] / n2)
    torch.testing.assert_close(grads[1], (2 * 0.25 * A[1:] / n1 + 2 * 0.75 * 2 * X[1:] / n2).repeat(3, 1))
