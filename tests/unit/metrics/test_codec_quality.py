"""Codec quality metrics (aurora.metrics.codec_quality) against independent references, and the
``tools.codec_eval`` command on a tiny exported codec."""

import io
import logging
import math
import sys
import tarfile
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from aurora.models.codec import Codec, CodecConfig
from aurora.models.codec.quantizer import code_counts
from aurora.metrics import codec_quality as cq
from aurora.tasks.codec import export_codec
from aurora.tasks.codec.artifacts import write_reconstructions
from tools import codec_eval
from tools.codec_eval import format_table

SR = 16000
TINY = dict(channels=8, strides=[2, 4, 5, 8], latent_dim=16, n_q=4, codebook_size=64)


def tiny_codec(seed: int = 0, **overrides) -> Codec:
    torch.manual_seed(seed)
    return Codec(CodecConfig(**{**TINY, **overrides})).eval()


def tone(n: int, seed: int = 0) -> torch.Tensor:
    """A few harmonics plus a little noise: a signal with structure at every STFT scale."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    x = sum(0.3 / k * torch.sin(2 * math.pi * 220 * k * t + k) for k in range(1, 6))
    return (x + 0.01 * torch.randn(n, generator=g)).float()


# -- independent references (numpy, float64) ------------------------------------------------------------
def librosa_mel_reference(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) (slaney scale and norm, fmin 0,
    fmax sr / 2) re-derived from librosa's source: [n_mels, n_fft // 2 + 1]."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    return weights * (2.0 / (mel_f[2: n_mels + 2] - mel_f[:n_mels]))[:, None]


def numpy_stft_magnitude(x: np.ndarray, n: int) -> np.ndarray:
    """|STFT| [n // 2 + 1, frames]: centred frames (reflect padding), periodic Hann, hop n / 4."""
    hop = n // 4
    padded = np.pad(x.astype(np.float64), n // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    frames = 1 + (len(padded) - n) // hop
    return np.abs(np.stack([np.fft.rfft(padded[i * hop: i * hop + n] * window) for i in range(frames)], axis=1))


# -- distances -------------------------------------------------------------------------------------------
def test_distances_of_a_signal_to_itself_are_zero():
    x = torch.stack([tone(4000, 0), tone(4000, 1)])
    assert torch.equal(cq.mel_distance(x, x, SR), torch.zeros(2))
    assert torch.equal(cq.stft_distance(x, x), torch.zeros(2))


def test_stft_distance_matches_a_numpy_computation_for_one_scale():
    x, y = tone(5000, 0).numpy(), (0.7 * tone(5000, 0) + 0.05 * tone(5000, 3).roll(37)).numpy()
    mx, my = numpy_stft_magnitude(x, 512), numpy_stft_magnitude(y, 512)
    log = lambda m: np.log10(np.maximum(m, 1e-5) ** 2)  # noqa: E731
    expected = np.abs(log(mx) - log(my)).mean() + np.abs(mx - my).mean()
    got = cq.stft_distance(torch.from_numpy(x), torch.from_numpy(y), window_lengths=[512])
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    # Both DAC scales are summed.
    both = cq.stft_distance(torch.from_numpy(x), torch.from_numpy(y))
    parts = [cq.stft_distance(torch.from_numpy(x), torch.from_numpy(y), window_lengths=[w]) for w in (2048, 512)]
    assert both.item() == pytest.approx(sum(p.item() for p in parts), rel=1e-6)


def test_mel_distance_matches_a_numpy_computation_for_one_scale():
    x, y = tone(5000, 0).numpy(), (tone(5000, 0) + 0.1 * tone(5000, 5).roll(11)).numpy()
    fbank = librosa_mel_reference(SR, 256, 40)
    mx, my = fbank @ numpy_stft_magnitude(x, 256), fbank @ numpy_stft_magnitude(y, 256)
    expected = np.abs(np.log10(np.maximum(mx, 1e-5)) - np.log10(np.maximum(my, 1e-5))).mean()
    got = cq.mel_distance(torch.from_numpy(x), torch.from_numpy(y), SR, n_mels=[40], window_lengths=[256])
    assert got.item() == pytest.approx(expected, rel=1e-4)
    # DAC's final config: 7 scales, magnitude term off (mag_weight 0), summed.
    assert cq.MEL_MAG_WEIGHT == 0.0 and cq.MEL_POW == 1.0
    assert len(cq.MEL_N_MELS) == len(cq.MEL_WINDOW_LENGTHS) == 7
    total = cq.mel_distance(torch.from_numpy(x), torch.from_numpy(y), SR)
    parts = [cq.mel_distance(torch.from_numpy(x), torch.from_numpy(y), SR, n_mels=[m], window_lengths=[w])
             for m, w in zip(cq.MEL_N_MELS, cq.MEL_WINDOW_LENGTHS)]
    assert total.item() == pytest.approx(sum(p.item() for p in parts), rel=1e-5)


@pytest.mark.parametrize("sr, n_fft, n_mels", [(16000, 32, 5), (16000, 512, 80), (16000, 2048, 320),
                                               (44100, 128, 20), (24000, 1024, 160)])
def test_mel_filterbank_matches_librosas_formula(sr, n_fft, n_mels):
    ours = cq.mel_filterbank(sr, n_fft, n_mels).double().numpy().T
    reference = librosa_mel_reference(sr, n_fft, n_mels)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-6 * reference.max()
    # torchaudio's slaney filterbank is the same up to its float32 arithmetic.
    import torchaudio.functional as AF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty bands at small n_fft, as in librosa
        theirs = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sr / 2, n_mels, sr, norm="slaney", mel_scale="slaney")
    assert np.abs(theirs.double().numpy().T - reference).max() <= 1e-3 * reference.max()


def test_mel_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa")
    for sr, n_fft, n_mels in [(16000, 32, 5), (16000, 2048, 320), (44100, 512, 80)]:
        reference = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
        np.testing.assert_allclose(cq.mel_filterbank(sr, n_fft, n_mels).numpy().T, reference,
                                   atol=1e-5 * reference.max())


def test_clips_shorter_than_half_a_window_are_zero_padded_not_rejected():
    x = tone(600)  # reflect padding needs more than 1024 samples for the 2048 window
    y = 0.5 * x
    assert torch.isfinite(cq.stft_distance(x, y)).all() and cq.stft_distance(x, y).item() > 0
    assert torch.isfinite(cq.mel_distance(x, y, SR)).all()


# -- SI-SDR ------------------------------------------------------------------------------------------------
def test_si_sdr_of_noise_at_a_known_snr_is_that_snr():
    g = torch.Generator().manual_seed(0)
    x = tone(16000).double()
    x = x - x.mean()
    for snr in (0.0, 10.0, 25.0):
        noise = torch.randn(16000, generator=g, dtype=torch.float64)
        noise = noise - noise.mean()
        noise = noise - (noise @ x) / (x @ x) * x  # orthogonal to x: the projection of x + n on x is x
        noise = noise * torch.sqrt((x @ x) / (noise @ noise) / 10 ** (snr / 10))
        assert cq.si_sdr(x, x + noise).item() == pytest.approx(snr, abs=0.1)


def test_si_sdr_follows_its_formula_and_is_scale_invariant():
    g = torch.Generator().manual_seed(1)
    x = tone(8000, 2).double() + 0.1
    y = 0.8 * x + 0.2 * torch.randn(8000, generator=g, dtype=torch.float64) + 0.3
    r, e = (x - x.mean()).numpy(), (y - y.mean()).numpy()
    alpha = (e @ r) / (r @ r)
    expected = 10 * np.log10(np.sum((alpha * r) ** 2) / np.sum((e - alpha * r) ** 2))
    assert cq.si_sdr(x, y).item() == pytest.approx(expected, abs=1e-6)
    for gain in (0.01, 3.0, -2.0):
        assert cq.si_sdr(x, gain * y).item() == pytest.approx(expected, abs=1e-4)
    assert cq.si_sdr(5.0 * x, y).item() == pytest.approx(expected, abs=1e-4)
    batch = cq.si_sdr(torch.stack([x, x]), torch.stack([y, x + 0.5 * (y - x)]))
    assert batch.shape == (2,) and batch[0].item() == pytest.approx(expected, abs=1e-6) and batch[1] > batch[0]


# -- codebooks ----------------------------------------------------------------------------------------------
def test_usage_stats_of_known_distributions():
    counts = torch.tensor([[5, 5, 5, 5], [20, 0, 0, 0], [2, 2, 0, 0]])
    entropy, perplexity = cq.usage_stats(counts)
    assert entropy.tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert perplexity.tolist() == pytest.approx([4.0, 1.0, 2.0])
    codes = torch.tensor([[[0, 1, 1], [3, 3, 3]]])  # [B=1, k=2, T=3]
    assert code_counts(codes, 4).tolist() == [[1, 2, 0, 0], [0, 0, 0, 3]]
    codes = torch.randint(0, 64, (3, 4, 50))  # the scatter-add (no host sync on a GPU) against bincount
    per_book = [torch.bincount(codes[:, k].flatten(), minlength=64) for k in range(4)]
    assert torch.equal(code_counts(codes, 64), torch.stack(per_book))


def batch_of(lengths: list[int], seconds: float = 0.5, seed: int = 0) -> dict:
    n = int(seconds * SR)
    audio = torch.zeros(len(lengths), 1, n)
    for i, length in enumerate(lengths):
        audio[i, 0, :length] = tone(length, seed + i)
    keys = [f"clip{seed + i:03d}" for i in range(len(lengths))]
    return {"audio": audio, "lengths": torch.tensor(lengths), "keys": keys}


def test_measure_quality_on_a_tiny_codec():
    codec = tiny_codec()
    codec.train()  # measure_quality evaluates in eval mode and leaves the mode as it found it
    batches = [batch_of([8000, 8000, 5000]), batch_of([8000, 1234], seed=10)]
    m = cq.measure_quality(codec, batches, speech_metrics=False)
    assert codec.training
    k, K = 4, 64
    expected = {"eval/mel_distance", "eval/stft_distance", "eval/si_sdr_db", "eval/bitrate_kbps", "eval/n_q",
                "eval/clips"} | {f"eval/{name}/q{i}" for name in ("usage_entropy", "perplexity") for i in range(k)}
    assert set(m) == expected
    assert m["eval/clips"] == 5
    assert m["eval/bitrate_kbps"] == pytest.approx(codec.cfg.frame_rate * k * math.log2(K) / 1000)
    assert m["eval/bitrate_kbps"] == pytest.approx(1.2)
    if hasattr(codec.cfg, "bitrate"):
        assert m["eval/bitrate_kbps"] == pytest.approx(codec.cfg.bitrate() / 1000)
    for i in range(k):
        assert 0.0 <= m[f"eval/usage_entropy/q{i}"] <= 1.0
        assert 1.0 <= m[f"eval/perplexity/q{i}"] <= K
        assert m[f"eval/perplexity/q{i}"] == pytest.approx(2 ** (m[f"eval/usage_entropy/q{i}"] * math.log2(K)))
    assert all(math.isfinite(m[key]) for key in ("eval/mel_distance", "eval/stft_distance", "eval/si_sdr_db"))

    # The clip-weighted mean of each clip scored alone, on its valid samples, through encode/decode.
    clips = [(b["audio"][i, :, : b["lengths"][i]]) for b in batches for i in range(len(b["keys"]))]
    with torch.no_grad():
        recons = [codec.eval().decode(codec.encode(c[None]))[0, :, : c.shape[-1]] for c in clips]
    mel = np.mean([cq.mel_distance(c, r, SR).item() for c, r in zip(clips, recons)])
    sdr = np.mean([cq.si_sdr(c, r).item() for c, r in zip(clips, recons)])
    assert m["eval/mel_distance"] == pytest.approx(mel, rel=1e-4)
    assert m["eval/si_sdr_db"] == pytest.approx(sdr, rel=1e-4, abs=1e-3)

    two = cq.measure_quality(codec, batches, n_q=2, speech_metrics=False)
    assert two["eval/bitrate_kbps"] == pytest.approx(0.6)
    assert "eval/usage_entropy/q1" in two and "eval/usage_entropy/q2" not in two
    # The first stages' codes do not depend on how many stages are used.
    assert two["eval/usage_entropy/q0"] == pytest.approx(m["eval/usage_entropy/q0"])
    with pytest.raises(ValueError, match="n_q"):
        cq.measure_quality(codec, batches, n_q=5)


def test_bitrate_curve_has_one_row_per_number_of_codebooks():
    codec = tiny_codec()
    rows = cq.bitrate_curve(codec, lambda: [batch_of([4000, 3000])], speech_metrics=False)
    assert [row["eval/n_q"] for row in rows] == [1, 2, 3, 4]
    assert [row["eval/bitrate_kbps"] for row in rows] == pytest.approx([0.3, 0.6, 0.9, 1.2])
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 5 and "kbps" in lines[0] and "mel_dist" in lines[0] and "pesq" not in lines[0]
    assert lines[1].split()[:2] == ["1", "0.30"] and lines[4].split()[:2] == ["4", "1.20"]


def test_format_table_marks_missing_metrics():
    rows = [{"eval/n_q": 1, "eval/bitrate_kbps": 0.3, "eval/pesq": 3.21},
            {"eval/n_q": 2, "eval/bitrate_kbps": 0.6}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["codebooks", "kbps", "pesq"]
    assert lines[1].split() == ["1", "0.30", "3.21"] and lines[2].split() == ["2", "0.60", "-"]


# -- speech metrics -----------------------------------------------------------------------------------
def speech_like(seconds: float = 3.0) -> np.ndarray:
    """A voiced, vowel-like signal: harmonics of a wobbling 120 Hz pitch shaped by three formants,
    in syllables of 250 ms."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = np.zeros_like(t)
    for k in range(1, 40):
        gain = sum(np.exp(-((k * f0 - formant) / 150.0) ** 2) for formant in (700, 1200, 2600)) + 0.05 / k
        x += np.where(k * f0 < SR / 2 - 200, gain, 0.0) * np.sin(k * phase)
    x *= np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 0.5
    return 0.3 * x / np.abs(x).max()


def test_pesq_and_stoi_are_near_their_maximum_for_a_clean_copy_and_lower_for_a_noisy_one():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    x = speech_like()
    noisy = x + np.random.default_rng(0).standard_normal(len(x)) * np.sqrt(np.mean(x**2) / 10)  # 10 dB SNR
    assert cq.pesq_wb(x, x) > 4.0 and cq.stoi_score(x, x) > 0.99
    assert cq.pesq_wb(x, noisy) < 3.0 and cq.stoi_score(x, noisy) < 0.9
    # Through measure_quality: a 16 kHz codec gets both.
    codec = tiny_codec()
    audio = torch.from_numpy(x[: SR]).float().view(1, 1, -1)
    batch = {"audio": audio, "lengths": torch.tensor([SR]), "keys": ["a"]}
    m = cq.measure_quality(codec, [batch])
    assert 1.0 <= m["eval/pesq"] <= 4.65 and 0.0 <= m["eval/stoi"] <= 1.0
    assert "eval/pesq" not in cq.measure_quality(codec, [batch], speech_metrics=False)


def test_speech_metrics_only_at_16khz_and_a_missing_package_is_reported_once(monkeypatch, caplog):
    codec24 = tiny_codec(sample_rate=24000)
    batch = batch_of([4000])
    at_24k = cq.measure_quality(codec24, [batch])
    assert "eval/pesq" not in at_24k and "eval/stoi" not in at_24k

    monkeypatch.setitem(sys.modules, "pesq", None)  # import pesq now raises ImportError
    monkeypatch.setattr(cq, "_MISSING_REPORTED", set())
    codec = tiny_codec()
    with caplog.at_level(logging.WARNING, logger=cq.__name__):
        first = cq.measure_quality(codec, [batch])
        cq.measure_quality(codec, [batch])
    assert "eval/pesq" not in first and "eval/mel_distance" in first
    reports = [r for r in caplog.records if "'pesq' package is not installed" in r.getMessage()]
    assert len(reports) == 1


# -- reconstructions -------------------------------------------------------------------------------------
def test_write_reconstructions_writes_flac_pairs_and_spectrogram_pngs(tmp_path):
    codec = tiny_codec()
    batch = batch_of([8000, 5000, 3000])
    batch["keys"][1] = "dir/clip"  # a key is made safe as a file name
    paths = write_reconstructions(codec, batch, tmp_path / "out", max_clips=2)
    assert len(paths) == 6 and all(p.is_file() for p in paths)
    names = sorted(p.name for p in paths)
    assert names == sorted(["clip000.orig.flac", "clip000.recon.flac", "clip000.png",
                            "dir_clip.orig.flac", "dir_clip.recon.flac", "dir_clip.png"])
    for stem, length in (("clip000", 8000), ("dir_clip", 5000)):
        for kind in ("orig", "recon"):
            info = sf.info(tmp_path / "out" / f"{stem}.{kind}.flac")
            assert info.samplerate == SR and info.frames == length and info.format == "FLAC"
        assert (tmp_path / "out" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    orig, _ = sf.read(tmp_path / "out" / "clip000.orig.flac")
    assert np.abs(orig - batch["audio"][0, 0].numpy()).max() < 1e-3  # 16-bit FLAC of the clip itself


# -- the command -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("codec") / "exported"
    export_codec(tiny_codec(), path)
    return path


def test_codec_eval_prints_the_table_and_the_bitrate_curve(exported, audio_shards, tmp_path, capsys):
    out = tmp_path / "recon"
    rc = codec_eval.main([str(exported), "--shards", str(audio_shards), "--batch-size", "8",
                          "--segment-seconds", "0.25", "--num-workers", "0", "--no-speech-metrics",
                          "--bitrate-curve", "--device", "cpu", "--out", str(out), "--max-clips", "2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "eval: 24 clips" in printed  # one pass over the set: each clip once
    lines = printed.splitlines()
    headers = [i for i, line in enumerate(lines) if line.split()[:3] == ["codebooks", "kbps", "mel_dist"]]
    assert len(headers) == 2
    assert lines[headers[0] + 1].split()[:2] == ["4", "1.20"]
    curve = [lines[headers[1] + j].split()[:2] for j in range(1, 5)]
    assert curve == [["1", "0.30"], ["2", "0.60"], ["3", "0.90"], ["4", "1.20"]]
    assert "pesq" not in printed
    assert any(line.split()[:1] == ["q3"] for line in lines)  # per-codebook usage
    assert len(list(out.glob("*.flac"))) == 4 and len(list(out.glob("*.png"))) == 2


def test_codec_eval_with_speech_metrics_and_a_batch_limit(exported, audio_shards, capsys):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    rc = codec_eval.main([str(exported), "--shards", str(audio_shards), "--batch-size", "4", "--batches", "1",
                          "--segment-seconds", "0.5", "--num-workers", "0", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0 and "eval: 4 clips" in printed
    header = next(line for line in printed.splitlines() if line.startswith("codebooks"))
    assert "pesq" in header.split() and "stoi" in header.split()


def test_codec_eval_errors_are_one_clear_line(exported, audio_shards, tmp_path, capsys):
    def error(argv):
        rc = codec_eval.main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        return err

    err = error([str(exported), "--shards", str(tmp_path / "nope"), "--device", "cpu"])
    assert "nope" in err and "does not exist" in err
    err = error([str(tmp_path / "no-run"), "--shards", str(audio_shards), "--device", "cpu"])
    assert "no-run does not exist" in err and "exported codec" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"task: codec\nrun:\n  dir: {run}\ndata:\n  shards: {audio_shards}\n")
    err = error([str(run), "--shards", str(audio_shards), "--device", "cpu"])
    assert "checkpoint" in err
    other = tmp_path / "codec24"
    export_codec(tiny_codec(sample_rate=24000), other)
    err = error([str(other), "--shards", str(audio_shards), "--device", "cpu"])
    assert "16000 Hz" in err and "24000 Hz" in err and "--resample" in err


def _flip_first_code(tar_path):
    """Rewrite the tar with the first code of its first sample changed."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".codes.npy"))
    codes = np.load(io.BytesIO(members[first][1]))
    codes[0, 0] = (codes[0, 0] + 1) % 64
    buffer = io.BytesIO()
    np.save(buffer, codes)
    members[first] = (members[first][0], buffer.getvalue())
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return members[first][0].name.split(".")[0]


def test_codec_eval_roundtrip_of_a_tokenized_set(exported, audio_shards, tmp_path, capsys):
    from data_prep import tokenize

    tokens = tmp_path / "tokens"
    one_shard = str(audio_shards / "shard-000001.tar")  # 8 clips
    tokenize.main(["--shards", one_shard, "--codec", str(exported), "--out", str(tokens), "--device", "cpu"])
    capsys.readouterr()
    rc = codec_eval.main([str(exported), "--shards", str(audio_shards), "--roundtrip", str(tokens), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "8 of 8 token samples match" in printed and "roundtrip: OK" in printed

    key = _flip_first_code(tokens / "shard-000001.tar")
    rc = codec_eval.main([str(exported), "--shards", str(audio_shards), "--roundtrip", str(tokens), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 1 and "7 of 8" in printed and "MISMATCH" in printed and key in printed

    # Source clips that are not there: named, and a mismatch.
    rc = codec_eval.main([str(exported), "--shards", str(audio_shards / "shard-000000.tar"), "--roundtrip", str(tokens),
                          "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 1 and "8 token samples have no source clip" in printed


def test_codec_eval_on_part_of_a_shard_set_scores_each_of_its_clips_once(exported, audio_shards, capsys):
    rc = codec_eval.main([str(exported), "--shards", str(audio_shards / "shard-{000000..000001}.tar"),
                          "--batch-size", "5", "--segment-seconds", "0.1", "--num-workers", "0",
                          "--no-speech-metrics", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0 and "eval: 16 clips" in printed
