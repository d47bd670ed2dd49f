"""Model FLOPs utilisation: achieved FLOP/s over the device's peak dense FLOP/s.

Peaks are the vendor datasheet figures WITHOUT 2:4 sparsity: NVIDIA's datasheets print the
tensor-core figures "with sparsity" (marked *), which is twice the dense rate, so the
tensor-core numbers below are those figures halved. A device this table does not know, or a
CPU, has no peak: MFU is then absent (None), never guessed.

Sources (per GPU, boost clock):
- H100 SXM5, H100 PCIe, H100 NVL: NVIDIA H100 Tensor Core GPU datasheet (2023).
  SXM: FP32 67, TF32 989*, BF16/FP16 1,979*. PCIe: FP32 51, TF32 756*, BF16/FP16 1,513*.
  NVL: FP32 60, TF32 835*, BF16/FP16 1,671*.
- H200 SXM, H200 NVL: NVIDIA H200 Tensor Core GPU datasheet (2024); the GH100 compute of the
  H100 SXM and NVL: SXM FP32 67, TF32 989*, BF16 1,979*; NVL FP32 60, TF32 835*, BF16 1,671*.
  GH200 (Grace Hopper) datasheet: the H100 SXM figures.
- A100 (SXM4 and PCIe, 40 and 80 GB): NVIDIA A100 Tensor Core GPU datasheet (2021):
  FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*).
- B200 (HGX B200, 1,000 W): NVIDIA HGX B200 datasheet (2025), per GPU: FP32 75, TF32 2.2 PF*,
  BF16/FP16 4.5 PF*.
- L40S: NVIDIA L40S datasheet (2023): FP32 91.6, TF32 183 (366*), BF16/FP16 362.05 (733*).
- L4: NVIDIA L4 datasheet (2023): FP32 30.3, TF32 60 (120*), BF16/FP16 121 (242*).
"""

import re
from typing import NamedTuple

import torch

TERA = 1e12


class DevicePeak(NamedTuple):
    """Dense peak FLOP/s of one device per precision."""

    bf16: float
    """BF16 tensor cores (FP16 is the same on every device here)."""
    tf32: float
    """TF32 tensor cores: fp32 matmuls when torch allows TF32."""
    fp32: float
    """IEEE FP32 on the CUDA cores: fp32 matmuls when torch does not allow TF32."""


_H100_SXM = DevicePeak(bf16=1979 / 2 * TERA, tf32=989 / 2 * TERA, fp32=67 * TERA)
_H100_NVL = DevicePeak(bf16=1671 / 2 * TERA, tf32=835 / 2 * TERA, fp32=60 * TERA)

# Matched in order against torch.cuda.get_device_name(), upper-cased: the more specific
# patterns come first ("H100 PCIe" before "H100", "GH200" is not an "H200").
PEAKS: list[tuple[str, DevicePeak]] = [
    (r"\bH100\b.*\bPCIE\b", DevicePeak(bf16=1513 / 2 * TERA, tf32=756 / 2 * TERA, fp32=51 * TERA)),
    (r"\bH100\b.*\bNVL\b", _H100_NVL),
    (r"\bH100\b", _H100_SXM),  # "NVIDIA H100 80GB HBM3", the SXM5 part
    (r"\bH200\b.*\bNVL\b", _H100_NVL),
    (r"\bH200\b", _H100_SXM),
    (r"\bGH200\b", _H100_SXM),
    (r"\bA100\b", DevicePeak(bf16=312 * TERA, tf32=156 * TERA, fp32=19.5 * TERA)),
    (r"\bB200\b", DevicePeak(bf16=4500 / 2 * TERA, tf32=2200 / 2 * TERA, fp32=75 * TERA)),
    (r"\bL40S\b", DevicePeak(bf16=362.05 * TERA, tf32=183 * TERA, fp32=91.6 * TERA)),
    (r"\bL4\b", DevicePeak(bf16=121 * TERA, tf32=60 * TERA, fp32=30.3 * TERA)),
]

PRECISIONS = ("bf16", "fp16", "tf32", "fp32")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def peak_flops_for_name(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of the device called `name` (as torch.cuda.get_device_name() gives it)
    at `precision` (bf16, fp16, tf32 or fp32 = IEEE fp32 without tensor cores); None for a
    device not in the table."""
    _check_precision(precision)
    upper = name.upper()
    for pattern, peak in PEAKS:
        if re.search(pattern, upper):
            return peak.bf16 if precision == "fp16" else getattr(peak, precision)
    return None


def tensor_core_precision(precision: str, convolutions: bool = False) -> str:
    """The precision whose peak bounds a run at `precision`: an `fp32` run computes on TF32
    tensor cores when torch lets its main operator use them: matmuls through
    ``torch.set_float32_matmul_precision`` (IEEE fp32 at "highest", torch's default), the
    convolutions of a model made of them (`convolutions`) through
    ``torch.backends.cudnn.allow_tf32`` (on by default)."""
    if precision != "fp32":
        return precision
    if convolutions:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_flops(device: torch.device, precision: str, convolutions: bool = False) -> float | None:
    """Dense peak FLOP/s of `device` for training at `precision` (bf16, fp16, tf32 or fp32;
    fp32 as in `tensor_core_precision`). None on a CPU or a GPU this table does not know:
    report no MFU rather than a made-up one."""
    _check_precision(precision)
    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device), tensor_core_precision(precision, convolutions))


def mfu(flops_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation, flops_per_s / peak; None when the peak is unknown."""
    return None if peak is None else flops_per_s / peak
