"""``aurora generate``: 2 ranks write what 1 process writes, and bad requests get one clear line."""

import json

import numpy as np
import pytest
import soundfile as sf

from tests.helpers.runs import cli, lm_train_args
from tests.helpers.steps import engine_overrides

CAPTIONS = ["a low tone", "a high tone", "noise"]


def _generate(pool, run, out, *extra: str) -> int:
    args = ["generate", str(run), "--trust-checkpoint", *[a for c in CAPTIONS for a in ("--caption", c)], "--num-samples", "2",
            "--out", str(out), "--max-seconds", "0.3", "--batch-size", "2", "--seed", "11", *extra]
    return [r.value for r in pool.run(cli, *args)]


def test_two_ranks_write_what_one_process_writes(tmp_path, lm_run, pool1, pool2):
    """6 prompts in batches of 2: rank 0 samples batches 0 and 2, rank 1 batch 1; the codes,
    the audio and the index equal a 1-process run's, because each prompt has its own seed."""
    assert _generate(pool1, lm_run, tmp_path / "one", "--cfg-scale", "2") == [0]
    assert _generate(pool2, lm_run, tmp_path / "two", "--cfg-scale", "2") == [0, 0]
    one = [json.loads(line) for line in (tmp_path / "one" / "samples.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    assert one == two and len(one) == 6
    assert [r["caption"] for r in one] == [c for c in CAPTIONS for _ in range(2)]
    assert [r["seed"] for r in one] == list(range(11, 17)) and one[0]["cfg_scale"] == 2.0
    for record in one:
        codes = np.load(tmp_path / "one" / record["codes"])
        assert codes.dtype == np.int16 and codes.shape == (4, record["frames"])
        assert np.array_equal(codes, np.load(tmp_path / "two" / record["codes"]))
        audio, rate = sf.read(tmp_path / "one" / record["file"])
        assert np.array_equal(audio, sf.read(tmp_path / "two" / record["file"])[0]) and rate == 16000
    # Two samples of one caption differ: their seeds do.
    assert not np.array_equal(np.load(tmp_path / "one" / one[0]["codes"]), np.load(tmp_path / "one" / one[1]["codes"]))


def test_a_prompt_sampled_alone_with_its_seed_is_the_same_clip(tmp_path, lm_run, pool1):
    assert _generate(pool1, lm_run, tmp_path / "all") == [0]
    args = ["generate", str(lm_run), "--trust-checkpoint", "--caption", CAPTIONS[1], "--out", str(tmp_path / "alone"), "--max-seconds", "0.3",
            "--seed", str(11 + 3)]
    assert pool1.run(cli, *args)[0].value == 0
    assert np.array_equal(np.load(tmp_path / "alone" / "sample_00000.codes.npy"),
                          np.load(tmp_path / "all" / "sample_00003.codes.npy"))


def test_generate_refuses_a_codec_run_and_a_caption_too_long(tmp_path, lm_run, capfd):
    codec_run = tmp_path / "codec"
    codec_run.mkdir()
    (codec_run / "config.yaml").write_text("task: codec\n")
    assert cli("generate", str(codec_run), "--trust-checkpoint", "--caption", "x", "--out", str(tmp_path / "o")) == 2
    assert "is a 'codec' run, not an audio LM run (task: lm or dpo)" in capfd.readouterr().err
    assert cli("generate", str(lm_run), "--trust-checkpoint", "--caption", "y" * 100, "--out", str(tmp_path / "o")) == 2
    assert "is 100 bytes; this LM reads at most 78 (model.max_text_len=80): shorten it" in capfd.readouterr().err
    assert cli("generate", str(lm_run), "--trust-checkpoint", "--out", str(tmp_path / "o")) == 2
    assert "no caption: give --caption TEXT" in capfd.readouterr().err


@pytest.mark.parametrize("engine", ["fsdp", "zero1", "zero3"])
def test_a_checkpoint_of_each_engine_loads(tmp_path, tokens, pool2, engine):
    """A 2-rank run of each engine (FSDP2's DCP shards; DeepSpeed's own files, ZeRO-3's
    partitioned) samples on 2 ranks; the fixture's DDP run is the plain DCP case. That the
    weights loaded are the trained ones is checked where runs of each engine are compared
    (tests/dist/test_resume.py, test_engine_parity.py)."""
    run = tmp_path / "run"
    args = lm_train_args(run, tokens, 2, "trainer.checkpoint_every=2", "model.codebook_size=64",
                         *engine_overrides(tmp_path)[engine])
    assert pool2.run(cli, *args)[0].value == 0
    assert _generate(pool2, run, tmp_path / "out") == [0, 0]
    records = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["checkpoint"].endswith("step_00000002") for r in records)
    assert np.load(tmp_path / "out" / records[-1]["codes"]).shape == (4, records[-1]["frames"])
