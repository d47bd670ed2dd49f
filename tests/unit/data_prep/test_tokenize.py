"""data_prep.tokenize in one process: batched encoding gives each clip its one-clip codes, and
bad input gets one clear line. A killed run resumes (tests/e2e/test_tokenize_resume.py); 2 ranks
give the same shards as 1 (tests/dist/test_tokenize_ranks.py)."""

import shutil

import numpy as np
import pytest
import torch

from aurora.data.manifest import read_manifest
from aurora.models.codec import Codec, CodecConfig
from aurora.tasks.codec import load_codec
from data_prep import batch_encode, tokenize
from tests.helpers.runs import REPO
from tests.helpers.tokens import BATCH, TINY, make_codec, source_clips, tar_bytes, token_samples

def test_batched_tokens_equal_one_clip_encodes(audio_shards, codec_dir, tokens, capsys):
    codec = load_codec(codec_dir).codec
    clips = source_clips(audio_shards)
    manifest = read_manifest(tokens)
    assert manifest["settings"]["batching"] == "masked"
    assert manifest["stats"]["batches"]["clips_per_batch"] > 2  # the batches really mixed clips
    seen = {}
    for shard in manifest["shards"]:
        seen.update(token_samples(tokens / shard["name"]))
    assert list(seen) == list(clips)  # every clip, in the source order
    for key, (codes, meta) in seen.items():
        with torch.no_grad():
            alone = codec.encode(clips[key].view(1, 1, -1))[0]
        assert codes.dtype == np.int16 and codes.shape == (4, -(-len(clips[key]) // 320))
        assert np.array_equal(codes, alone.numpy()), key
        assert meta["frames"] == codes.shape[1] and meta["frame_rate"] == 50.0 and meta["text"]

    # The test has teeth: batched without the length masks, the short clips' last frames change.
    window = list(clips.values())[:8]
    plain = batch_encode.encode_batch(codec, window, torch.device("cpu"), "fp32", masked=False)
    masked = batch_encode.encode_batch(codec, window, torch.device("cpu"), "fp32", masked=True)
    with torch.no_grad():
        alone = [codec.encode(clip.view(1, 1, -1))[0].to(torch.int16) for clip in window]
    assert all(torch.equal(m, a) for m, a in zip(masked, alone))
    assert not all(torch.equal(p, a) for p, a in zip(plain, alone))

    # The token set is self-contained and names its codec.
    assert manifest["codec_id"] == tokenize.codec_id(load_codec(tokens / manifest["codec"]).codec)
    assert manifest["codec_id"] == tokenize.codec_id(codec)
    assert [manifest[k] for k in ("n_q", "codebook_size", "frame_rate", "sample_rate")] == [4, 64, 50.0, 16000]
    total = manifest["stats"]["total"]
    assert total["clips"] == 24 and total["tokens"] == 4 * total["frames"] and total["audio_seconds_per_s"] > 0


@pytest.mark.parametrize("batching", ["equal-length", "single"])
def test_other_batchings_give_the_same_tokens(audio_shards, codec_dir, tokens, tmp_path, batching):
    out = tmp_path / "tokens"
    tokenize.main(["--shards", str(audio_shards), "--codec", str(codec_dir), "--out", str(out), *BATCH,
                   "--batching", batching])
    assert tar_bytes(out) == tar_bytes(tokens)
    batches = read_manifest(out)["stats"]["batches"]
    assert batches["padding"] == 0.0 if batching == "equal-length" else batches["clips_per_batch"] == 1.0


def test_plan_batches():
    frames = [5, 3, 5, 9, 3, 5, 1, 6]
    plan = batch_encode.plan_batches
    assert plan(frames, hop=10, budget_samples=200, width=1.0) == [[6], [1, 4, 0, 2], [5, 7], [3]]
    assert plan(frames, hop=10, budget_samples=200, width=0.0) == [[6], [1, 4], [0, 2, 5], [7], [3]]
    assert plan(frames, hop=10, budget_samples=60, width=9.0) == [[6, 1], [4], [0], [2], [5], [7], [3]]


@pytest.mark.parametrize("zeroing", ["slices", "masked_fill"])
def test_masking_is_exact_for_context_blocks_and_elu(zeroing, monkeypatch):
    """ConvNeXt context blocks (depthwise conv, LayerNorm over channels, per-frame MLP) and ELU keep
    masked batches exact (big layer scales, so that the blocks matter); with both ways of zeroing
    (slices on a CPU, one masked_fill_ on a GPU)."""
    if zeroing == "masked_fill":
        monkeypatch.setattr(batch_encode, "SLICE_MASK_DEVICES", ())
    clips = [0.1 * torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in (700, 3000, 5123, 9600)]
    for overrides in ({"context_blocks": 2}, {"activation": "elu"}):
        torch.manual_seed(0)
        codec = Codec(CodecConfig(**{**TINY, **overrides})).eval()
        with torch.no_grad():
            for name, param in codec.named_parameters():
                if name.endswith("bias") or name.endswith("gamma"):
                    param.normal_(0.0, 0.5 if name.endswith("gamma") else 0.1)
        assert batch_encode.masking_problem(codec, torch.device("cpu")) is None
        masked = batch_encode.encode_batch(codec, clips, torch.device("cpu"), "fp32", masked=True)
        with torch.no_grad():
            alone = [codec.encode(clip.view(1, 1, -1))[0].to(torch.int16) for clip in clips]
        assert all(torch.equal(m, a) for m, a in zip(masked, alone)), overrides


def test_masking_probe_rejects_an_encoder_it_does_not_fit(codec_dir):
    codec = load_codec(codec_dir).codec
    assert batch_encode.masking_problem(codec, torch.device("cpu")) is None
    codec.encoder.stem.padding_mode = "reflect"
    assert "pads with something else than zeros" in batch_encode.masking_problem(codec, torch.device("cpu"))


class GlobalContext(torch.nn.Module):
    """Adds each channel's mean over time: not per-frame, so length masks cannot make it exact."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y + y.mean(-1, keepdim=True)


def test_codec_that_masking_does_not_fit_falls_back_to_equal_length_batches(audio_shards, codec_dir, tmp_path,
                                                                           capsys, monkeypatch):
    codec = load_codec(codec_dir).codec
    codec.encoder.head = GlobalContext(codec.encoder.head)
    assert "differs" in batch_encode.masking_problem(codec, torch.device("cpu"))
    monkeypatch.setattr(tokenize, "load_codec", lambda path, trust: (codec, "a codec with global context"))
    out = tmp_path / "tokens"
    argv = ["--shards", str(audio_shards), "--codec", str(codec_dir), "--out", str(out), *BATCH]
    tokenize.main(argv)
    assert "length masking does not apply to this codec" in capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["settings"]["batching"] == "equal-length"
    clips = source_clips(audio_shards)
    for shard in manifest["shards"]:
        for key, (codes, _) in token_samples(out / shard["name"]).items():
            with torch.no_grad():
                assert np.array_equal(codes, codec.encode(clips[key].view(1, 1, -1))[0].numpy()), key
    line = error_line(capsys, [*argv[:-2], "--batching", "masked"])
    assert "--batching masked does not give this codec exact per-clip codes" in line


def error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit:
        tokenize.main(argv)
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("data_prep.tokenize: error: ")
    return lines[0]


def test_errors_name_the_problem_and_the_fix(audio_shards, codec_dir, tokens, tmp_path, capsys):
    def args(shards=audio_shards, codec=codec_dir, out=tmp_path / "out", *more):
        return ["--shards", str(shards), "--codec", str(codec), "--out", str(out), *more]

    line = error_line(capsys, args(codec=tmp_path / "nope"))
    assert "--codec" in line and "does not exist" in line and "exported codec" in line
    (tmp_path / "empty").mkdir()
    assert "is not a codec" in error_line(capsys, args(codec=tmp_path / "empty"))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(REPO / "configs/codec/tiny.yaml", run / "config.yaml")
    line = error_line(capsys, args(codec=run))
    assert "is a training run directory" in line and "pass --trust-checkpoint" in line
    line = error_line(capsys, [*args(codec=run), "--trust-checkpoint"])
    assert "no checkpoint" in line and "train until the run saves a checkpoint" in line
    lm_run = tmp_path / "lm_run"
    lm_run.mkdir()
    shutil.copy(REPO / "configs/lm/tiny.yaml", lm_run / "config.yaml")
    assert "not a codec run" in error_line(capsys, [*args(codec=lm_run), "--trust-checkpoint"])

    line = error_line(capsys, args(shards=tmp_path / "no_shards"))
    assert line.startswith("data_prep.tokenize: error: --shards:") and "does not exist" in line
    assert "is a tokens shard set, not audio" in error_line(capsys, args(shards=tokens))

    codec_24k = make_codec(tmp_path / "codec24k", sample_rate=24000)
    line = error_line(capsys, args(codec=codec_24k))
    assert "holds 16000 Hz audio but the codec expects 24000 Hz: pass --resample" in line
    assert not (tmp_path / "out").exists()  # nothing written before the inputs were checked

    # Resuming into a token set made with another codec would mix two codecs' tokens.
    mixed = tmp_path / "mixed"
    shutil.copytree(tokens, mixed)
    line = error_line(capsys, args(codec=make_codec(tmp_path / "other", n_q=2), out=mixed))
    assert "was made with codec_id=" in line and "give a new --out" in line


def test_resample_flag_accepts_another_rate(audio_shards, tmp_path, capsys):
    codec_24k = make_codec(tmp_path / "codec24k", sample_rate=24000)
    out = tmp_path / "tokens"
    tokenize.main(["--shards", str(audio_shards), "--codec", str(codec_24k), "--out", str(out), "--resample"])
    manifest = read_manifest(out)
    assert manifest["sample_rate"] == 24000 and manifest["num_samples"] == 24 and manifest["settings"]["resample"]


def test_keys_leaving_the_folder_and_clips_too_long_are_skipped_not_written(codec_dir, tmp_path):
    """Issue 21: tokenize wrote a source key ``../x`` back as a member name; and it decodes whole
    clips, so their length is checked on the header first (--max-seconds)."""
    import io

    import soundfile as sf
    import webdataset as wds

    from aurora.data.manifest import write_manifest
    from tests.helpers.tokens import token_samples

    def flac(seconds):
        buffer = io.BytesIO()
        sf.write(buffer, 0.1 * np.sin(np.arange(round(seconds * 16000)) / 9.0), 16000, format="FLAC")
        return buffer.getvalue()

    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "shard-000000.tar")) as writer:
        for key, seconds in (("good", 0.3), ("../escape", 0.3), ("long", 2.0)):
            writer.write({"__key__": key, "flac": flac(seconds), "json": b'{"text": "t"}'})
    write_manifest(shards, "audio", [{"name": "shard-000000.tar", "samples": 3, "seconds": 2.6}], 16000)
    out = tmp_path / "tokens"
    tokenize.main(["--shards", str(shards), "--codec", str(codec_dir), "--out", str(out), "--max-seconds", "1"])
    assert list(token_samples(out / "shard-000000.tar")) == ["good"]
    assert read_manifest(out)["skipped"] == {"bad_key": 1, "too_long": 1}
