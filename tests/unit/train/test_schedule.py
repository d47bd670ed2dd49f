"""The LR schedule, by hand."""

import math

import pytest

from aurora.config.schema import OptimConfig
from aurora.train.schedule import lr_factor


def test_lr_schedule_by_hand():
    warmup, decay, floor = 4, 10, 0.1
    assert [lr_factor(s, warmup, decay, floor) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, warmup, decay, floor) == pytest.approx(1.0)
    # Halfway through the cosine: floor + (1 - floor) * (1 + cos(pi/2)) / 2
    assert lr_factor(9, warmup, decay, floor) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(14, warmup, decay, floor) == pytest.approx(floor)
    assert lr_factor(100, warmup, decay, floor) == pytest.approx(floor)
    assert OptimConfig().decay_steps is None
