"""data.batching=dynamic: duration buckets, the padded-seconds budget, padding, and resume."""

import itertools
import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora.data import DataConfig, DataError, build_loader
from aurora.data.buckets import SHORTEST_BUCKET_SECONDS, DurationBuckets
from data_prep import make_shards, synth

RATE = 16000


@pytest.fixture(scope="module")
def spread_shards(tmp_path_factory):
    """48 clips of 0.1 to 1.5 s: a wide spread of durations."""
    root = tmp_path_factory.mktemp("dynamic")
    synth.main(["--out", str(root / "corpus"), "--num-clips", "48", "--seed", "5",
                "--min-seconds", "0.1", "--max-seconds", "1.5"])
    make_shards.main(["--manifest", str(root / "corpus" / "metadata.jsonl"), "--out", str(root / "shards"),
                      "--samples-per-shard", "12"])
    return root / "shards"


def config(shards, **overrides):
    values = dict(shards=str(shards), batching="dynamic", max_seconds_per_batch=3.0, bucket_width=0.1,
                  num_workers=0, shuffle_buffer=16, sample_rate=RATE, segment_seconds=1.5)
    values.update(overrides)
    return DataConfig(**values)


def take(loader, n):
    return list(itertools.islice(loader, n))


def padding_fraction(batches):
    valid = sum(int(b["lengths"].sum()) for b in batches)
    padded = sum(b["audio"].shape[0] * b["audio"].shape[-1] for b in batches)
    return 1 - valid / padded


def test_batches_respect_the_budget_and_group_similar_lengths(spread_shards):
    batches = take(build_loader(config(spread_shards), "audio", 0, 1, seed=0), 40)
    sizes = {len(b["keys"]) for b in batches}
    assert len(sizes) > 2  # the batch size varies with the clip length
    for batch in batches:
        lengths = batch["lengths"].tolist()
        assert batch["audio"].shape[-1] == max(lengths)  # padded to the longest, not the segment
        assert len(lengths) * max(lengths) / RATE <= 3.0
        if min(lengths) / RATE > SHORTEST_BUCKET_SECONDS:
            assert max(lengths) / min(lengths) <= 1.1 + 1e-6
        for i, n in enumerate(lengths):
            assert not batch["audio"][i, 0, n:].any()


def test_bucketing_cuts_padding_against_fixed_batches(spread_shards):
    dynamic = take(build_loader(config(spread_shards), "audio", 0, 1, seed=0), 40)
    fixed = take(build_loader(config(spread_shards, batching="fixed", batch_size=4), "audio", 0, 1, seed=0), 40)
    assert padding_fraction(dynamic) < 0.06 < 0.3 < padding_fraction(fixed)


def test_every_clip_is_batched_once_per_epoch_of_draws(spread_shards):
    loader = build_loader(config(spread_shards, shuffle_buffer=4), "audio", 0, 1, seed=1)
    seen = []
    for batch in loader:
        seen += batch["keys"]
        if loader.cursors[0].epoch == 1:
            break
    # Everything drawn in epoch 0 was batched, except what still waits in a bucket.
    waiting = [index for epoch, index in loader.cursors[0].waiting if epoch == 0]
    epoch0 = seen[: 48 - len(waiting)]
    assert len(set(epoch0)) == len(epoch0) == 48 - len(waiting)


def test_exact_resume_with_samples_waiting_in_buckets(spread_shards):
    cfg = config(spread_shards, num_workers=2)
    reference = take(build_loader(cfg, "audio", 0, 1, seed=2), 14)
    first = build_loader(cfg, "audio", 0, 1, seed=2)
    take(first, 6)
    state = json.loads(json.dumps(first.state_dict()))
    assert any(w["waiting"] for w in state["workers"])
    resumed = build_loader(cfg, "audio", 0, 1, seed=2)
    resumed.load_state_dict([state])
    for got, want in zip(take(resumed, 8), reference[6:]):
        assert got["keys"] == want["keys"] and torch.equal(got["audio"], want["audio"])


def test_token_shards_bucket_by_frames(token_shards):
    manifest = json.loads((token_shards / "manifest.json").read_text())
    cfg = DataConfig(shards=str(token_shards), batching="dynamic", context_frames=40, max_seconds_per_batch=4.0,
                     num_workers=0)
    for batch in take(build_loader(cfg, "tokens", 0, 1, seed=0), 5):
        frames = batch["lengths"].tolist()
        assert batch["codes"].shape[-1] == max(frames)
        assert len(frames) * max(frames) / manifest["frame_rate"] <= 4.0


def test_token_shards_without_a_frame_rate_cannot_be_bucketed(token_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(token_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    del manifest["frame_rate"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    cfg = DataConfig(shards=str(shards), batching="dynamic", context_frames=40, num_workers=0)
    with pytest.raises(DataError, match="manifest has no frame_rate: re-create the token shards"):
        build_loader(cfg, "tokens", 0, 1, seed=0)


@pytest.mark.parametrize("overrides, message", [
    (dict(max_seconds_per_batch=1.0), "max_seconds_per_batch=1.0 is less than the longest example"),
    (dict(bucket_width=0.0), "bucket_width must be > 0"),
    (dict(batching="sorted"), "data.batching must be one of"),
])
def test_config_errors(spread_shards, overrides, message):
    with pytest.raises(DataError, match=message):
        build_loader(config(spread_shards, **overrides), "audio", 0, 1, seed=0)


@settings(max_examples=200, deadline=None)
@given(seconds=st.floats(1e-4, 30.0), longest=st.floats(0.5, 30.0), width=st.floats(0.01, 1.0))
def test_a_clip_lies_within_its_bucket_bounds(seconds, longest, width):
    buckets = DurationBuckets(longest, longest * 4, width)
    seconds = min(seconds, longest)
    k = buckets.bucket(seconds)
    assert seconds <= buckets.upper(k) * (1 + 1e-9)
    if k < buckets.last:
        assert seconds > buckets.upper(k + 1) * (1 - 1e-9)
    assert buckets.capacity(k) * buckets.upper(k) <= longest * 4 * (1 + 1e-9)
