"""Every recipe's first losses equal the golden ones (``tests/helpers/golden.py``): bit for bit
on the machine kind that recorded them, within rounding on another CPU kind."""

import json

import pytest

from tests.helpers import golden


@pytest.mark.parametrize("recipe", sorted(golden.RECIPES))
def test_first_losses_are_the_golden_ones(tmp_path, audio_shards, token_shards, recipe):
    record = json.loads(golden.path(recipe).read_text())
    shards = {"audio": audio_shards, "tokens": token_shards}[golden.RECIPES[recipe][1]]
    got = golden.run_recipe(recipe, tmp_path / recipe, shards)
    assert got.keys() == record["metrics"].keys()
    if record["recorded_on"] == golden.machine():
        assert got == record["metrics"], "numerics changed: if that was meant, run python -m tests.helpers.golden --write"
    else:
        for key, values in record["metrics"].items():
            assert got[key] == pytest.approx(values, rel=golden.OTHER_MACHINE_RTOL), (key, record["recorded_on"])
