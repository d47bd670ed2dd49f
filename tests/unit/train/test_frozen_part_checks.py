"""Frozen parts in one process: the id of a set of weights, the EMA update through the parts'
engines, and the part declarations the loop refuses (the distributed behaviour is
``tests/dist/test_frozen_parts.py``)."""

import copy

import pytest
import torch
from torch import nn

from aurora.config.schema import OptimConfig, SyncConfig, SyncMode, TrainConfig
from aurora.engines import build_engine
from aurora.runs import weights_id
from aurora.tasks.base import MAIN_PART, FrozenPartSpec, PartModels, PartSpec
from aurora.train.loop import _check_parts


def test_weights_id_names_the_bytes_of_every_tensor():
    model = nn.Linear(3, 2)
    same = copy.deepcopy(model)
    assert weights_id(model) == weights_id(same) and weights_id(model).startswith("sha256:")
    with torch.no_grad():
        same.bias[1] = torch.nextafter(same.bias[1], torch.tensor(1.0))  # one ulp
    assert weights_id(same) != weights_id(model)
    assert weights_id(copy.deepcopy(model).double()) != weights_id(model)


def test_ema_update_follows_the_source_and_refuses_another_shape(world_of_one):
    engine = build_engine(TrainConfig(), world_of_one)
    source, other = nn.Linear(3, 2), nn.Linear(2, 2)
    target = copy.deepcopy(source).requires_grad_(False)
    start = {name: p.detach().clone() for name, p in target.named_parameters()}
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    models = PartModels({MAIN_PART: source, "ema": target, "other": other},
                        {MAIN_PART: engine, "ema": engine, "other": engine})
    models.ema_update("ema", MAIN_PART, decay=0.75)
    for name, p in target.named_parameters():
        torch.testing.assert_close(p, 0.75 * start[name] + 0.25 * dict(source.named_parameters())[name])
    with pytest.raises(ValueError, match="part 'other' cannot follow part 'model': their parameters differ"):
        models.ema_update("other", MAIN_PART, decay=0.75)


def _specs(*frozen: tuple[str, bool]) -> tuple[list[PartSpec], list[FrozenPartSpec]]:
    model = nn.Linear(2, 2)
    return ([PartSpec(MAIN_PART, model, [], OptimConfig(), None)],
            [FrozenPartSpec(name, nn.Linear(2, 2), [], updated=updated) for name, updated in frozen])


def test_parts_with_one_name_are_refused():
    with pytest.raises(ValueError, match=r"distinct names, got \['model', 'teacher', 'teacher'\]"):
        _check_parts(TrainConfig(), *_specs(("teacher", False), ("teacher", True)))


def test_a_changing_frozen_part_under_hierarchical_sync_is_refused():
    hierarchical = TrainConfig(sync=SyncConfig(mode=SyncMode.hierarchical))
    _check_parts(hierarchical, *_specs(("teacher", False)))  # never changes: the nodes agree
    with pytest.raises(ValueError, match="frozen part 'ema' changes after every step, .* use sync.mode=flat"):
        _check_parts(hierarchical, *_specs(("teacher", False), ("ema", True)))
