"""bf16 autocast on the CPU: right convolutions whichever kernels this CPU's torch picks."""

import pytest
import torch
import torch.nn.functional as F

from aurora import precision
from aurora.precision import bf16_autocast


pytestmark = pytest.mark.filterwarnings("ignore:oneDNN's bf16 convolutions are wrong on this CPU")


@pytest.fixture
def probe_answers(monkeypatch):
    """Make the oneDNN check answer ``error`` (its cache cleared before and after)."""
    def answer(error: float):
        monkeypatch.setattr(precision, "onednn_bf16_convolution_error", lambda: error)
        precision.cpu_bf16_needs_aten.cache_clear()

    yield answer
    precision.cpu_bf16_needs_aten.cache_clear()


@pytest.mark.parametrize("conv, x_shape, w_shape, kwargs", [
    (F.conv2d, (8, 4, 20, 2), (4, 4, 3, 9), {"stride": (1, 2), "padding": (1, 4)}),  # the STFT discriminator's last layers
    (F.conv1d, (8, 4, 8), (6, 4, 16), {"stride": 2, "padding": 8}),
])
def test_a_kernel_window_wider_than_the_input_is_right_in_bf16(conv, x_shape, w_shape, kwargs):
    """Forward and both gradients within bf16's rounding of fp32, on a shape that oneDNN 3.10.2's
    AMX kernels get wrong by ~100 % (on other CPUs torch uses ATen's kernels for it anyway)."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(x_shape, generator=gen), torch.randn(w_shape, generator=gen)

    def forward_backward(autocast) -> list[torch.Tensor]:
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        with autocast:
            y = conv(xi, wi, **kwargs)
            (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return [y.float(), xi.grad, wi.grad]

    with torch.autocast("cpu", enabled=False):
        reference = forward_backward(torch.autocast("cpu", enabled=False))
    for what, got, want in zip(["output", "input grad", "weight grad"], forward_backward(bf16_autocast("cpu")), reference):
        assert (got - want).norm() / want.norm() < 0.02, what


def test_onednn_is_off_inside_the_region_only_where_it_is_wrong(probe_answers):
    before = torch.backends.mkldnn.enabled
    probe_answers(1.2)
    with bf16_autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled == before and not torch.is_autocast_enabled("cpu")

    probe_answers(0.003)  # bf16's own rounding: oneDNN is right
    with bf16_autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.enabled == before


def test_the_flag_is_restored_when_the_region_raises(probe_answers):
    before = torch.backends.mkldnn.enabled
    probe_answers(float("inf"))
    with pytest.raises(RuntimeError, match="inside"), bf16_autocast("cpu"):
        raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled == before


def test_fp32_is_left_alone(probe_answers):
    probe_answers(1.2)
    before = torch.backends.mkldnn.enabled
    with bf16_autocast("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.enabled == before


def test_the_check_warns_once_with_what_it_measured(probe_answers):
    probe_answers(1.21)
    with pytest.warns(UserWarning, match=r"oneDNN's bf16 convolutions are wrong on this CPU \(relative error 1\.21"):
        assert precision.cpu_bf16_needs_aten()
    assert precision.cpu_bf16_needs_aten()  # cached: no second warning (pytest would fail on none above)
