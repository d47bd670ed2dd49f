"""Distributed runs against a single-process run of the same global batches (gloo, CPU).

2-process DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 must give the losses, gradient norms and final
weights of a 1-process run (and DDP/FSDP2 its first-step gradients; DeepSpeed keeps its reduced
gradients in its own partitions), within rtol 2e-4 / atol 2e-5: the engines only change how
the same sums are split and reduced. Accumulated micro-batches must equal one step on the
large batch, on every engine.
"""

import pytest
import torch

from tests.conftest import run_cmd

SCRIPT = "tests/dist_scripts/train_steps.py"

RECIPES = {
    "lm": ("configs/lm/tiny.yaml", ["data.context_frames=24", "model.backbone.num_hidden_layers=2",
                                    "model.backbone.hidden_size=64", "model.backbone.intermediate_size=128"]),
    "codec": ("configs/codec/tiny.yaml", ["data.segment_seconds=0.2"]),
}


def _run(tmp_path, recipe: str, shards, nproc: int, name: str, *overrides: str) -> dict:
    config, base = RECIPES[recipe]
    out = tmp_path / f"{name}.pt"
    args = [SCRIPT, config, str(out), f"run.dir={tmp_path / name}", f"data.shards={shards}",
            "trainer.progress_bar=false", *base, *overrides]
    if nproc > 1:
        run_cmd(args, nproc=nproc)
    else:
        run_cmd(args)
    return torch.load(out)


ENGINES = {
    "ddp": ["engine.name=ddp"],
    "fsdp": ["engine.name=fsdp"],
    **{f"zero{s}": ["engine.name=deepspeed", f"engine.zero_stage={s}"] for s in (1, 2, 3)},
}


def _assert_same(ref: dict, other: dict, rtol: float, atol: float) -> None:
    assert ref["losses"] == pytest.approx(other["losses"], rel=rtol, abs=atol)
    norms = [[m["grad_norm"] for m in run["metrics"]] for run in (ref, other)]
    assert norms[0] == pytest.approx(norms[1], rel=rtol, abs=atol)
    assert not other["grads"] or ref["grads"].keys() == other["grads"].keys()
    for name in other["grads"]:
        torch.testing.assert_close(other["grads"][name], ref["grads"][name], rtol=rtol, atol=atol, msg=name)
    for name in ref["params"]:
        torch.testing.assert_close(other["params"][name], ref["params"][name], rtol=rtol, atol=atol, msg=name)


@pytest.fixture(scope="module")
def shard_sets(audio_shards, token_shards):
    return {"lm": token_shards, "codec": audio_shards}


@pytest.mark.parametrize("recipe", ["lm", "codec"])
def test_every_engine_matches_single_process(tmp_path, shard_sets, recipe):
    shards = shard_sets[recipe]
    single = _run(tmp_path, recipe, shards, 1, "single", "engine.name=ddp")
    assert all(torch.isfinite(torch.tensor(single["losses"])))
    assert any(g.abs().sum() > 0 for g in single["grads"].values())
    for engine, overrides in ENGINES.items():
        dist = _run(tmp_path, recipe, shards, 2, engine, *overrides)
        _assert_same(single, dist, rtol=2e-4, atol=2e-5)


def test_accumulation_equals_large_batch(tmp_path, token_shards):
    large = _run(tmp_path, "lm", token_shards, 1, "large", "trainer.grad_accum_steps=1")
    accum = _run(tmp_path, "lm", token_shards, 1, "accum", "trainer.grad_accum_steps=4")
    _assert_same(large, accum, rtol=1e-4, atol=1e-5)
    for engine, overrides in ENGINES.items():
        accum_dist = _run(tmp_path, "lm", token_shards, 2, f"accum_{engine}", "trainer.grad_accum_steps=2", *overrides)
        _assert_same(large, accum_dist, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_dead_code_reset_keeps_replicas_equal(tmp_path, audio_shards, engine):
    """Codes are replaced at a step boundary with the same rows on every rank (the script
    fails if the replicas' weights differ afterwards)."""
    out = _run(tmp_path, "codec", audio_shards, 2, engine, f"engine.name={engine}", "quantizer.dead_code_every=1")
    assert sum(m["codes_reset"] for m in out["metrics"]) > 0
