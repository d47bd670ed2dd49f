"""Malformed tars, JSON, .npy, FLAC and WAV members (tools.bench.fuzz_data's hypothesis
strategies) through the rules, the reader, inspect_shards, tokenize and make_shards: nothing
escapes but a counted skip. A few hundred cases here; the bench runs 10,000 or more."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.bench import fuzz_data



def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def encoder():
    return fuzz_data.tiny_encoder()


def assert_nothing_escaped(tally):
    assert not tally.escapes, tally.examples


@fuzz(250)
@given(st.sampled_from(["audio", "tokens"]).flatmap(lambda kind: st.tuples(st.just(kind), fuzz_data.samples(kind))))
def test_the_rules_raise_nothing_but_bad_samples(case):
    tally = fuzz_data.Tally()
    fuzz_data.run_rules(*case, tally)
    assert_nothing_escaped(tally)


@fuzz(30)
@given(fuzz_data.tars())
def test_reader_inspect_tokenize_and_make_shards_count_every_bad_sample(encoder, tar):
    tally = fuzz_data.Tally()
    fuzz_data.run_tar(*tar, tally, encoder)
    assert_nothing_escaped(tally)
