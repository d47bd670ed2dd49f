"""bf16 autocast, with the CPU's convolutions moved off oneDNN where oneDNN computes them wrong.

On CPUs with AVX-512-BF16/AMX (Sapphire Rapids and later Xeons) torch runs bf16 convolutions
on oneDNN's brgemm kernels. In torch 2.11 (oneDNN 3.10.2) these return wrong numbers when the
padded kernel window is wider than a short input: a stride-2, 9-wide kernel over a 2-wide
input (the last layers of the STFT discriminator, whose frequency axis is halved each layer)
gives a relative error of ~1 and sometimes NaN, forward and backward, while ATen's own
kernels, fp32, and the GPU's cuDNN are right (oneDNN's brgemm convolutions have had such
padding bugs before: oneDNN#5568, pytorch#163347). The GAN codec's bf16 step on such a CPU had
a NaN discriminator loss from the first step.

Which shapes fail is oneDNN's internals, so aurora does not guess: the first bf16 autocast on
the CPU computes two known failing shapes with oneDNN and with ATen's kernels, and where they
disagree, oneDNN stays off inside every bf16 region on the CPU (convolutions and matmuls then
run on ATen's kernels: slower, and right). The flag is restored on leaving the region, so code
outside it keeps oneDNN.
"""

import contextlib
import functools
import warnings

import torch
import torch.nn.functional as F

WRONG = 0.05
"""Relative error of oneDNN against ATen above which oneDNN is wrong (bf16 rounding gives ~3e-3)."""


@contextlib.contextmanager
def _onednn_off():
    """``torch.backends.mkldnn.enabled`` False inside (its ``flags()`` also sets oneDNN's TF32
    flag, which warns on every use in a build without Intel GPUs)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _relative_error(conv, x: torch.Tensor, w: torch.Tensor, **kwargs) -> float:
    with torch.no_grad():
        onednn = conv(x, w, **kwargs).float()
        with _onednn_off():
            reference = conv(x, w, **kwargs).float()
    error = ((onednn - reference).norm() / reference.norm()).item()
    return float("inf") if error != error else error


def onednn_bf16_convolution_error() -> float:
    """The larger relative error of oneDNN's bf16 convolution against ATen's on two shapes that
    are wrong on oneDNN 3.10.2's AMX kernels (0 where torch has no oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return 0.0
    gen = torch.Generator().manual_seed(0)
    x2, w2 = torch.randn(8, 4, 20, 2, generator=gen), torch.randn(4, 4, 3, 9, generator=gen)
    x1, w1 = torch.randn(8, 4, 8, generator=gen), torch.randn(6, 4, 16, generator=gen)
    return max(_relative_error(F.conv2d, x2.bfloat16(), w2.bfloat16(), stride=(1, 2), padding=(1, 4)),
               _relative_error(F.conv1d, x1.bfloat16(), w1.bfloat16(), stride=2, padding=8))


@functools.cache
def cpu_bf16_needs_aten() -> bool:
    """Whether this CPU's oneDNN computes bf16 convolutions wrong (checked once per process)."""
    error = onednn_bf16_convolution_error()
    if error > WRONG:
        what = f"relative error {error:.3g}" if error != float("inf") else "non-finite outputs"
        warnings.warn(f"oneDNN's bf16 convolutions are wrong on this CPU ({what} against ATen's kernels on a "
                      f"known shape; torch {torch.__version__}): bf16 regions on the CPU run "
                      "with oneDNN off (torch.backends.mkldnn), on ATen's slower kernels", stacklevel=3)
        return True
    return False


def bf16_autocast(device_type: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, bfloat16)`` (a no-op if not ``enabled``), with oneDNN off
    inside it on a CPU where its bf16 convolutions are wrong."""
    if not enabled:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    if device_type == "cpu" and cpu_bf16_needs_aten():
        stack.enter_context(_onednn_off())
    stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
    return stack
