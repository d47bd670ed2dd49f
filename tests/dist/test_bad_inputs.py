"""A bad sample in a shard is skipped and counted, and training goes on, on every rank; a caption
longer than the LM reads is cut and counted when the config says so."""

import io
import json
import shutil
import tarfile

from data_prep.synth_tokens import write_token_shards
from tests.helpers.runs import CODEC_SMALL_GAN, cli, lm_train_args, read_metrics


def _corrupt_first_flac(src, dst):
    """Copy shard ``src`` to ``dst`` with the first .flac member's bytes garbled."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        garbled = False
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if member.name.endswith(".flac") and not garbled:
                data = b"not a flac at all" + data[64:]
                garbled = True
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def test_corrupt_flac_member_is_skipped_and_counted(tmp_path, audio_shards, pool2):
    shards = tmp_path / "shards"
    shutil.copytree(audio_shards, shards)
    _corrupt_first_flac(audio_shards / "shard-000000.tar", shards / "shard-000000.tar")
    run = tmp_path / "codec"
    results = pool2.run(cli, "train", "configs/codec/tiny.yaml", f"run.dir={run}", f"data.shards={shards}",
                        "trainer.max_steps=6", "trainer.log_every=1", "trainer.progress_bar=false", "data.batch_size=4",
                        "data.segment_seconds=0.2", *CODEC_SMALL_GAN)
    assert [r.value for r in results] == [0, 0]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    # Counted each time the bad member is met: 6 steps go over that shard more than once.
    assert metrics[-1]["data/skipped/decode_error"] >= 1
    assert all(m["loss"] == m["loss"] for m in metrics)
    assert any("shard-000000.tar" in r.output for r in results)


def test_truncated_captions_are_counted_over_both_ranks(tmp_path, pool2):
    """Every third clip's caption is 100 bytes (the LM reads 78): the logged count, summed over
    the ranks, is the number of such clips among the keys the ranks recorded training on."""
    shards = write_token_shards(tmp_path / "tokens", num_clips=24, caption=lambda i: "x" * 100 if i % 3 == 0 else "y")
    run = tmp_path / "lm"
    args = lm_train_args(run, shards, 3, "model.long_text=truncate", "trainer.log_every=1",
                         "trainer.record_sample_keys=true")
    assert [r.value for r in pool2.run(cli, *args)] == [0, 0]
    long_keys = {f"clip{i:05d}" for i in range(0, 24, 3)}
    seen = [json.loads(line) for rank in (0, 1) for line in
            (run / "sample_keys" / f"rank_{rank:05d}.jsonl").read_text().splitlines()]
    for metrics in read_metrics(run):
        expected = sum(key in long_keys for record in seen if record["step"] <= metrics["step"] for key in record["keys"])
        assert metrics["data/truncated_text"] == expected
    assert expected > 0
