"""A bad sample in a shard is skipped and counted, and training goes on, on every rank."""

import io
import shutil
import tarfile

from tests.helpers.runs import CODEC_SMALL_GAN, cli, read_metrics


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
