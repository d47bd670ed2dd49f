"""Training FLOPs of the Qwen2 decoder and the AudioLM against FlopCounterMode, and the MFU peaks.

FlopCounterMode counts matmuls (mm, addmm, bmm) and attention kernels it has a formula for. On
the CPU the default SDPA kernel (_scaled_dot_product_flash_attention_for_cpu) has none, so it
counts the linear layers only; under the MATH backend SDPA decomposes into bmm's and the
attention FLOPs (the full S x S scores) are counted too. Both counts must match to the FLOP.
"""

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from aurora.models.audio_lm import AudioLM, AudioLMConfig, encode_text
from aurora.models.codec import Codec, CodecConfig, Discriminator, DiscriminatorConfig
from aurora.perf.flops import (
    attention_flops_per_token,
    audio_lm_seq_len,
    audio_lm_train_flops,
    codec_train_flops,
    decoder_matmul_params,
    discriminator_train_flops,
    transformer_train_flops_per_token,
)
from aurora.models.transformer import TRANSFORMER_PRESETS, Qwen2ForCausalLM, TransformerConfig
from aurora.perf import mfu as mfu_module
from aurora.perf.mfu import mfu, peak_flops, peak_flops_for_name

# GQA (8 query heads, 2 kv heads) so that a k/v projection counted at the query width shows.
CFG = TransformerConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=2)


def counted(fn, math_sdpa: bool) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        if math_sdpa:
            with sdpa_kernel(SDPBackend.MATH):
                fn()
        else:
            fn()
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def test_matmul_params_are_the_linear_weights_with_gqa_width():
    model = Qwen2ForCausalLM(CFG)
    weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    assert decoder_matmul_params(CFG) == weights
    mha = TransformerConfig(**{**vars(CFG), "num_key_value_heads": 8})
    assert decoder_matmul_params(mha) - decoder_matmul_params(CFG) == 2 * 2 * 64 * (64 - 2 * 8)


@pytest.mark.parametrize("name", ["qwen2-0.5b", "qwen2-1.5b", "qwen2-7b"])
def test_matmul_params_of_the_presets(name):
    cfg = TRANSFORMER_PRESETS[name]
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    assert decoder_matmul_params(cfg) == weights


def test_linear_flops_equal_6_n_per_token():
    model = Qwen2ForCausalLM(CFG)
    ids = torch.randint(0, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    flops = counted(lambda: model(ids).float().pow(2).mean().backward(), math_sdpa=False)
    assert "bmm" not in flops  # the CPU attention kernel is not counted, see the module docstring
    assert flops["mm"] + flops["addmm"] == 32 * 6 * (decoder_matmul_params(CFG) + CFG.hidden_size * CFG.vocab_size)


def test_all_flops_with_attention_match_the_formula():
    model = Qwen2ForCausalLM(CFG)
    ids = torch.randint(0, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    flops = counted(lambda: model(ids).float().pow(2).mean().backward(), math_sdpa=True)
    assert flops["bmm"] == 32 * attention_flops_per_token(CFG, 16)
    assert sum(flops.values()) == 32 * transformer_train_flops_per_token(CFG, 16)


def test_audio_lm_flops_with_heads_and_loss():
    cfg = AudioLMConfig(n_q=3, codebook_size=40, max_text_len=10, backbone=CFG)
    model = AudioLM(cfg)
    g = torch.Generator().manual_seed(0)
    text, codes = encode_text(["a dog", "rain"], 10), torch.randint(0, 40, (2, 3, 7), generator=g)

    def step():
        loss, _ = model.loss(text, codes, torch.tensor([7, 5]))
        loss.backward()

    flops = counted(step, math_sdpa=True)
    assert audio_lm_seq_len(cfg, 7) == 10 + 7 + 3 - 2
    assert sum(flops.values()) == 2 * audio_lm_train_flops(cfg, 7)
    linear_only = counted(step, math_sdpa=False)
    attention = 2 * audio_lm_seq_len(cfg, 7) * attention_flops_per_token(CFG, audio_lm_seq_len(cfg, 7))
    assert sum(linear_only.values()) == 2 * audio_lm_train_flops(cfg, 7) - attention


@pytest.mark.parametrize("name, bf16_tflops, tf32_tflops", [
    ("NVIDIA H100 80GB HBM3", 989.5, 494.5),
    ("NVIDIA H100 PCIe", 756.5, 378.0),
    ("NVIDIA H100 NVL", 835.5, 417.5),
    ("NVIDIA H200", 989.5, 494.5),
    ("NVIDIA GH200 480GB", 989.5, 494.5),
    ("NVIDIA A100-SXM4-80GB", 312.0, 156.0),
    ("NVIDIA A100-PCIE-40GB", 312.0, 156.0),
    ("NVIDIA L40S", 362.05, 183.0),
    ("NVIDIA L4", 121.0, 60.0),
])
def test_peak_lookup_by_device_name(name, bf16_tflops, tf32_tflops):
    assert peak_flops_for_name(name, "bf16") == pytest.approx(bf16_tflops * 1e12)
    assert peak_flops_for_name(name, "fp16") == pytest.approx(bf16_tflops * 1e12)
    assert peak_flops_for_name(name, "tf32") == pytest.approx(tf32_tflops * 1e12)


@pytest.mark.parametrize("name", ["NVIDIA H800", "NVIDIA H20", "NVIDIA L40", "NVIDIA GeForce RTX 4090",
                                  "Tesla V100-SXM2-32GB", "AMD Instinct MI300X"])
def test_unknown_devices_have_no_peak(name):
    assert peak_flops_for_name(name, "bf16") is None


def test_cpu_has_no_peak_and_no_mfu():
    peak = peak_flops(torch.device("cpu"), "bf16")
    assert peak is None
    assert mfu(1e12, peak) is None


def test_cuda_device_is_looked_up_by_name(monkeypatch):
    monkeypatch.setattr(mfu_module.torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    device = torch.device("cuda", 0)
    assert peak_flops(device, "bf16") == pytest.approx(989.5e12)
    # fp32 training runs on TF32 tensor cores where torch lets its main operator use them, else
    # on the FP32 units: matmuls (the LM) by the matmul precision, convolutions (the codec) by cuDNN's switch.
    monkeypatch.setattr(mfu_module.torch.backends.cudnn, "allow_tf32", True)  # torch's default
    monkeypatch.setattr(mfu_module.torch, "get_float32_matmul_precision", lambda: "highest")  # torch's default
    assert peak_flops(device, "fp32") == pytest.approx(67e12)
    assert peak_flops(device, "fp32", convolutions=True) == pytest.approx(494.5e12)
    monkeypatch.setattr(mfu_module.torch, "get_float32_matmul_precision", lambda: "high")
    assert peak_flops(device, "fp32") == pytest.approx(494.5e12)
    monkeypatch.setattr(mfu_module.torch.backends.cudnn, "allow_tf32", False)
    assert peak_flops(device, "fp32", convolutions=True) == pytest.approx(67e12)
    monkeypatch.setattr(mfu_module.torch.cuda, "get_device_name", lambda device=None: "NVIDIA H800")
    assert peak_flops(device, "bf16") is None


def test_mfu_and_precision_errors():
    assert mfu(494.75e12, 989.5e12) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="precision 'fp8' is not one of bf16, fp16, tf32, fp32"):
        peak_flops(torch.device("cpu"), "fp8")


def test_codec_flops_are_counted_and_linear_in_length():
    torch.manual_seed(0)
    codec = Codec(CodecConfig())
    one, two = codec_train_flops(codec, 1.0), codec_train_flops(codec, 2.0)
    assert one > 0 and two == 2 * one


def test_codec_and_discriminator_flops_on_meta_equal_a_real_run():
    """The recipe counts on the meta device (no arithmetic): the count must be a real run's."""
    cfg = CodecConfig(channels=4, latent_dim=16, decoder_channels=32)
    disc = DiscriminatorConfig(channels=2, periods=(2,), fft_sizes=(256,))
    real = codec_train_flops(Codec(cfg), 0.25), discriminator_train_flops(Discriminator(disc), cfg.sample_rate, 0.25)
    with torch.device("meta"):
        meta = (codec_train_flops(Codec(cfg), 0.25),
                discriminator_train_flops(Discriminator(disc), cfg.sample_rate, 0.25))
    assert meta == real and min(real) > 0
