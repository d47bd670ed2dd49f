"""A bad sample in a shard is skipped and counted, and training goes on, on every rank; a caption
longer than the LM reads is cut and counted when the config says so."""

import io
import shutil
import tarfile

from data_prep.synth_tokens import write_token_shards
from tests.helpers.runs import CODEC_SMALL_GAN, cli, lm_train_args, read_metrics, sample_key_records


def _corrupt_first_flac(src, dst) -> str:
    """Copy shard ``src`` to ``dst`` with the first .flac member's bytes garbled; its key."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        garbled = None
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if member.name.endswith(".flac") and garbled is None:
                data = b"not a flac at all" + data[64:]
                garbled = member.name.removesuffix(".flac")
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    return garbled


def test_corrupt_flac_member_is_skipped_and_counted(tmp_path, audio_shards, pool2):
    """Against the same run on intact shards: each rank trains on the intact run's samples in
    the same order, less the corrupt one (nothing else lost); the count at each step is the number
    of times a rank drew it by then (each draw skipped, its batch filled by the next sample)."""
    shards = tmp_path / "shards"
    shutil.copytree(audio_shards, shards)
    bad = _corrupt_first_flac(audio_shards / "shard-000000.tar", shards / "shard-000000.tar")
    batch, steps = 4, 6

    def train(run, data, max_steps):
        results = pool2.run(cli, "train", "configs/codec/tiny.yaml", f"run.dir={run}", f"data.shards={data}",
                            f"trainer.max_steps={max_steps}", "trainer.log_every=1", "trainer.progress_bar=false",
                            f"data.batch_size={batch}", "data.segment_seconds=0.2", "trainer.record_sample_keys=true",
                            *CODEC_SMALL_GAN)
        assert [r.value for r in results] == [0, 0]
        return results

    intact, corrupt = tmp_path / "intact", tmp_path / "corrupt"
    train(intact, audio_shards, steps + 1)  # a batch more: as far as the corrupt run reads
    results = train(corrupt, shards, steps)
    metrics = read_metrics(corrupt)
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    assert all(m["loss"] == m["loss"] for m in metrics)
    assert any("shard-000000.tar" in r.output for r in results)

    draws = {}  # rank: where the corrupt sample is in the intact run's stream of that rank
    for rank, (expected, seen) in enumerate(zip(sample_key_records(intact), sample_key_records(corrupt))):
        stream = [key for record in expected for key in record["keys"]]
        draws[rank] = [i for i, key in enumerate(stream) if key == bad]
        assert [key for record in seen for key in record["keys"]] == [key for key in stream if key != bad][: batch * steps], rank
        assert len(stream) - len(draws[rank]) >= batch * steps
    assert sum(map(len, draws.values())) >= 2  # 6 steps go over the shards more than once
    # A rank's i-th draw comes after d - i good samples: it is counted with the batch they fill.
    for step, m in enumerate(metrics, start=1):
        counted = sum((d - i) // batch < step for ds in draws.values() for i, d in enumerate(ds))
        assert m.get("data/skipped/decode_error", 0) == counted, step


def test_truncated_captions_are_counted_over_both_ranks(tmp_path, pool2):
    """Every third clip's caption is 100 bytes (the LM reads 78): the logged count, summed over
    the ranks, is the number of such clips among the keys the ranks recorded training on."""
    shards = write_token_shards(tmp_path / "tokens", num_clips=24, caption=lambda i: "x" * 100 if i % 3 == 0 else "y")
    run = tmp_path / "lm"
    args = lm_train_args(run, shards, 3, "model.long_text=truncate", "trainer.log_every=1",
                         "trainer.record_sample_keys=true")
    assert [r.value for r in pool2.run(cli, *args)] == [0, 0]
    long_keys = {f"clip{i:05d}" for i in range(0, 24, 3)}
    seen = [record for records in sample_key_records(run) for record in records]
    for metrics in read_metrics(run):
        expected = sum(key in long_keys for record in seen if record["step"] <= metrics["step"] for key in record["keys"])
        assert metrics["data/truncated_text"] == expected
    assert expected > 0
