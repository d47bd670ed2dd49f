"""Elastic resume of the data stream: another number of readers continues the epoch in
progress without losing or repeating a sample."""

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora.data import DataConfig, build_loader
from aurora.data.plan import EpochPlan, normalize, slice_ranges
from aurora.data.stream import Cursor, leftover
from aurora.data.tars import ShardReader
from data_prep import make_shards, synth

NUM_CLIPS = 40
PER_SHARD = 7  # 6 shards, the last one short


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    synth.main(["--out", str(root / "corpus"), "--num-clips", str(NUM_CLIPS), "--seed", "3",
                "--min-seconds", "0.2", "--max-seconds", "0.6"])
    make_shards.main(["--manifest", str(root / "corpus" / "metadata.jsonl"), "--out", str(root / "shards"),
                      "--samples-per-shard", str(PER_SHARD)])
    return root / "shards"


def config(shards, **overrides):
    values = dict(shards=str(shards), batch_size=1, num_workers=0, shuffle_buffer=6, sample_rate=16000,
                  segment_seconds=0.6)
    values.update(overrides)
    return DataConfig(**values)


def start(cfg, world, seed=11, states=None):
    loaders = [build_loader(cfg, "audio", rank, world, seed) for rank in range(world)]
    for loader in loaders:
        if states is not None:
            loader.load_state_dict(json.loads(json.dumps(states)))
    return loaders


def take_keys(loader, n):
    return [k for batch in itertools.islice(loader, n) for k in batch["keys"]]


def keys_by_epoch(loader, epochs):
    """{epoch: keys} a one-sample-per-batch loader delivers in its next ``epochs`` epochs."""
    first = loader.cursors[0].epoch
    out = {}
    for batch in loader:
        epoch = loader.cursors[0].epoch
        if epoch >= first + epochs:
            return out
        out.setdefault(epoch, []).extend(batch["keys"])


def rest_of_epoch(loader):
    """The keys a one-sample-per-batch loader delivers until its reader moves to the next epoch."""
    return keys_by_epoch(loader, 1).get(loader.cursors[0].epoch - 1, [])


def all_keys(shards):
    return {f"clips__{i:06d}" for i in range(NUM_CLIPS)}


@pytest.mark.parametrize("worlds, taken", [((4, 2), 3), ((2, 3), 5), ((4, 2, 3), 2), ((1, 4), 9)])
def test_elastic_resume_loses_and_repeats_nothing_in_the_epoch(shards, worlds, taken):
    cfg = config(shards)
    loaders = start(cfg, worlds[0])
    delivered = [k for loader in loaders for k in take_keys(loader, taken)]
    for world in worlds[1:-1]:  # a middle run that itself stops part-way
        loaders = start(cfg, world, states=[loader.state_dict() for loader in loaders])
        delivered += [k for loader in loaders for k in take_keys(loader, taken)]
    loaders = start(cfg, worlds[-1], states=[loader.state_dict() for loader in loaders])
    for loader in loaders:
        delivered += rest_of_epoch(loader)
    assert len(delivered) == NUM_CLIPS and set(delivered) == all_keys(shards)


def test_elastic_resume_across_worker_counts(shards):
    """2 ranks x 2 workers → 3 ranks x 1 reader: the readers, not the ranks, are re-planned."""
    cfg = config(shards, num_workers=2, batch_size=2)
    loaders = start(cfg, 2)
    delivered = [k for loader in loaders for k in take_keys(loader, 4)]
    loaders = start(config(shards), 3, states=[loader.state_dict() for loader in loaders])
    for loader in loaders:
        delivered += rest_of_epoch(loader)
    assert len(delivered) == NUM_CLIPS and set(delivered) == all_keys(shards)


def test_after_the_resumed_epoch_whole_epochs_follow_on_the_new_readers(shards):
    loaders = start(config(shards), 4)
    for loader in loaders:
        take_keys(loader, 3)
    loaders = start(config(shards), 3, states=[loader.state_dict() for loader in loaders])
    per_epoch = [keys_by_epoch(loader, 3) for loader in loaders]
    for epoch in (1, 2):
        keys = [k for by_epoch in per_epoch for k in by_epoch.get(epoch, [])]
        assert len(keys) == NUM_CLIPS and set(keys) == all_keys(shards)


def keys_of(loader, epoch, ranges):
    plan, urls = loader.stream.plan, loader.stream.urls
    out = []
    for shard, first, stop in plan.segments(epoch, ranges):
        reader = ShardReader(urls[shard])
        out += [reader.sample(n)["__key__"] for n in range(first, stop)]
        reader.close()
    return out


def test_dynamic_batching_leftover_includes_the_samples_waiting_in_buckets(shards):
    cfg = config(shards, batching="dynamic", max_seconds_per_batch=1.8, bucket_width=0.3)
    loaders = start(cfg, 2)
    delivered = [k for loader in loaders for k in take_keys(loader, 3)]
    states = [loader.state_dict() for loader in loaders]
    assert any(w["waiting"] for s in states for w in s["workers"])  # the case under test
    resumed = start(cfg, 3, states=states)[0]
    remaining = keys_of(resumed, 0, resumed.stream.plan.partial[0])
    assert not set(remaining) & set(delivered)
    assert len(remaining) + len(delivered) == NUM_CLIPS and set(remaining) | set(delivered) == all_keys(shards)


def test_same_readers_resume_exactly_rather_than_elastically(shards):
    cfg = config(shards, batch_size=2)
    reference = start(cfg, 2)
    expected = [take_keys(loader, 9) for loader in reference]
    loaders = start(cfg, 2)
    for loader in loaders:
        take_keys(loader, 4)
    resumed = start(cfg, 2, states=[loader.state_dict() for loader in loaders])
    assert [take_keys(loader, 5) for loader in resumed] == [keys[8:] for keys in expected]


# -- the plan's arithmetic ------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=8).filter(lambda c: sum(c) > 0),
       readers=st.integers(1, 7), epoch=st.integers(0, 3))
def test_shares_partition_the_epoch_evenly(counts, readers, epoch):
    plan = EpochPlan(counts, seed=5, readers=readers)
    shares = [plan.share(epoch, r) for r in range(readers)]
    assert normalize([r for s in shares for r in s.ranges]) == [(0, sum(counts))]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    segments = plan.segments(epoch, [(0, sum(counts))])
    assert sorted((shard, first, stop) for shard, first, stop in segments) == \
        [(i, 0, n) for i, n in enumerate(counts) if n]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 9), min_size=1, max_size=6), old=st.integers(1, 5),
       buffer=st.integers(0, 5), data=st.data())
def test_leftover_is_exactly_what_no_reader_drew(counts, old, buffer, data):
    """Against a brute-force replay of each reader's shuffle (waiting samples aside)."""
    from aurora.data.shuffle import PositionShuffle
    from aurora.data.stream import shuffle_seed

    plan = EpochPlan(counts, seed=2, readers=old)
    cursors, drawn = {}, set()
    for reader in range(old):
        share = plan.share(0, reader)
        draws = data.draw(st.integers(0, len(share)))
        shuffle = PositionShuffle(len(share), buffer, shuffle_seed(2, 0, reader))
        drawn |= {share.index(shuffle.draw()) for _ in range(draws)}
        cursors[reader] = Cursor(0, draws)
    remaining = leftover(plan, cursors, buffer)[0]
    assert normalize([(i, i + 1) for i in set(range(sum(counts))) - drawn]) == remaining


def test_slice_ranges():
    assert slice_ranges([(0, 3), (10, 12), (20, 25)], 2, 7) == [(2, 3), (10, 12), (20, 22)]
