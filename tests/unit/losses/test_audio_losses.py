import math

import pytest
import torch
import torchaudio.functional as AF

from aurora.losses.audio import MultiScaleMelLoss, masked_l1

SR = 16000
N_FFTS = (256, 512, 1024)
N_MELS = (40, 80, 160)


def reference_mel_loss(x, y, lengths):
    """Crop every item to its length and transform it alone, straight from torchaudio.functional."""
    total = 0.0
    for n_fft, n_mels in zip(N_FFTS, N_MELS):
        fbank = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, SR / 2, n_mels, SR)
        abs_sum, count = 0.0, 0
        for xb, yb, length in zip(x, y, lengths.tolist()):
            logs = []
            for sig in (xb[..., :length], yb[..., :length]):
                spec = AF.spectrogram(
                    sig, pad=0, window=torch.hann_window(n_fft, dtype=sig.dtype), n_fft=n_fft,
                    hop_length=n_fft // 4, win_length=n_fft, power=1.0, normalized=False,
                )
                mel = torch.einsum("cft,fm->cmt", spec, fbank.to(sig.dtype))
                logs.append(mel.clamp(min=1e-5).log10())
            abs_sum += (logs[0] - logs[1]).abs().sum()
            count += logs[0].numel()
        total += abs_sum / count
    return total


@pytest.fixture(scope="module")
def loss_fn():
    return MultiScaleMelLoss(SR, n_ffts=N_FFTS, n_mels=N_MELS)


def test_matches_per_item_reference(loss_fn):
    torch.manual_seed(0)
    x, y = torch.randn(3, 1, 6000), torch.randn(3, 1, 6000)
    lengths = torch.tensor([6000, 4321, 1500])
    expected = reference_mel_loss(x.double(), y.double(), lengths)
    torch.testing.assert_close(loss_fn(x, y, lengths).double(), expected, rtol=1e-5, atol=0)


def test_matches_reference_without_lengths(loss_fn):
    torch.manual_seed(1)
    x, y = torch.randn(2, 1, 5000), torch.randn(2, 1, 5000)
    expected = reference_mel_loss(x.double(), y.double(), torch.tensor([5000, 5000]))
    torch.testing.assert_close(loss_fn(x, y).double(), expected, rtol=1e-5, atol=0)


def test_bf16_autocast_leaves_the_loss_in_fp32(loss_fn):
    """The filterbank matmul and the log run in fp32 under autocast too: the same loss, to the bit."""
    x, y = torch.randn(2, 1, 5000), torch.randn(2, 1, 5000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss_fn(x, y)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, loss_fn(x, y))


def test_zero_for_identical_inputs(loss_fn):
    x = torch.randn(2, 1, 4000)
    assert loss_fn(x, x.clone(), torch.tensor([4000, 2500])).item() == 0.0


def test_padding_does_not_matter(loss_fn):
    torch.manual_seed(2)
    x, y = torch.randn(3, 1, 6000), torch.randn(3, 1, 6000)
    lengths = torch.tensor([6000, 3000, 700])
    base = loss_fn(x, y, lengths)

    x2, y2 = x.clone().requires_grad_(), y.clone()
    for b, length in enumerate(lengths.tolist()):
        x2.data[b, :, length:] = 100 * torch.randn(6000 - length)
        y2[b, :, length:] = -50.0
    perturbed = loss_fn(x2, y2, lengths)
    assert torch.equal(base, perturbed)

    perturbed.backward()
    padding = torch.arange(6000) >= lengths[:, None]
    assert (x2.grad[:, 0][padding] == 0).all()
    assert (x2.grad[:, 0][~padding] != 0).any()


def test_buffers_follow_device_but_not_checkpoints(loss_fn):
    assert loss_fn.state_dict() == {}
    assert len(list(loss_fn.buffers())) == 2 * len(N_FFTS)
    assert all(b.dtype == torch.float64 for b in MultiScaleMelLoss(SR).double().buffers())


def test_rejects_mismatched_scales():
    with pytest.raises(ValueError, match="same length"):
        MultiScaleMelLoss(SR, n_ffts=(256, 512), n_mels=(40,))


def test_masked_l1_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[0.0, 0.0, 0.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0, 3.0, 9.0]], [[1.0, -3.0, 7.0, 7.0]]])
    # item 0 keeps 3 samples: |0|+|2|+|0|; item 1 keeps 2: |1|+|3|
    assert math.isclose(masked_l1(x, y, torch.tensor([3, 2])).item(), (2 + 1 + 3) / 5, rel_tol=1e-6)
    assert math.isclose(masked_l1(x, y).item(), (0 + 2 + 0 + 5 + 1 + 3 + 7 + 7) / 8, rel_tol=1e-6)
