"""The async checkpoint's staging copy (``aurora.train.checkpoint._CachedStager``)."""

import torch

from aurora.train.checkpoint import _CachedStager


def test_tensors_go_into_the_first_saves_buffers_and_other_values_are_current():
    state = {"model": {"w": torch.ones(3)}, "step": 1, "rng": {"seed": [1, 2]}}
    stager = _CachedStager(pin_memory=False)
    first = stager.stage(state)
    buffer = first["model"]["w"].data_ptr()
    assert buffer != state["model"]["w"].data_ptr()  # a copy, not the live tensor

    state["model"]["w"].add_(1)
    state["step"], state["rng"]["seed"] = 2, [3, 4]
    second = stager.stage(state)
    assert second["model"]["w"].data_ptr() == buffer
    assert torch.equal(second["model"]["w"], torch.full((3,), 2.0))
    assert second["step"] == 2 and second["rng"]["seed"] == [3, 4]


def test_a_state_of_another_layout_gets_new_buffers():
    stager = _CachedStager(pin_memory=False)
    stager.stage({"model": {"w": torch.ones(3)}})
    grown = stager.stage({"model": {"w": torch.ones(3), "b": torch.zeros(2)}, "step": 4})
    assert set(grown["model"]) == {"w", "b"} and grown["step"] == 4
    assert torch.equal(grown["model"]["b"], torch.zeros(2))
