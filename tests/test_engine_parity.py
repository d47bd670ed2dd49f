"""Distributed runs against a single-process run of the same global batches (gloo, CPU).

2-process DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 must give the losses, gradient norms and final
weights of a 1-process run (and DDP/FSDP2 its first-step gradients; DeepSpeed keeps its reduced
gradients in its own partitions), within rtol 2e-4 / atol 2e-5: the engines only change how
the same sums are split and reduced. Accumulated micro-batches must equal one step on the
large batch, on every engine, and reduce gradients once per step where the engine can.

The collectives each engine issued (recorded by ``aurora.perf.comm_log``) are checked against
the scale model's prediction for the same configuration (``aurora.perf.traffic``).
"""

import json

import pytest
import torch

from aurora.config import load_config
from aurora.models.audio_lm import AudioLM
from aurora.tasks.lm import LMTrainConfig
from tests.conftest import run_cmd
from aurora.perf.traffic import collective_bytes_per_step

SCRIPT = "tests/dist_scripts/train_steps.py"
STEPS = 3


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


def _engines(tmp_path) -> dict[str, list[str]]:
    # DeepSpeed's ZeRO-3 defaults keep a tiny model gathered: parameters under 1e5 elements
    # persist, and up to 1e9 elements stay live from forward to backward, prefetched 2e8 at a
    # time. A user JSON turns those off, so the tiny model is partitioned and re-gathered per
    # module as a large model's layers are (and the JSON override path is exercised).
    zero3_json = tmp_path / "zero3.json"
    zero3_json.write_text(json.dumps({"zero_optimization": {
        "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
        "stage3_max_live_parameters": 0, "stage3_prefetch_bucket_size": 0}}))
    return {
        "ddp": ["engine.name=ddp"],
        "fsdp": ["engine.name=fsdp"],
        "zero1": ["engine.name=deepspeed", "engine.deepspeed.zero_stage=1"],
        "zero2": ["engine.name=deepspeed", "engine.deepspeed.zero_stage=2"],
        "zero3": ["engine.name=deepspeed", "engine.deepspeed.zero_stage=3", f"engine.deepspeed.config={zero3_json}"],
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
def lm_runs(tmp_path_factory, token_shards) -> dict:
    """The tiny LM, 3 steps: one process with 1 and 4 micro-batches, and every engine on 2
    processes with 2 micro-batches each."""
    tmp = tmp_path_factory.mktemp("lm_runs")
    runs = {("single", n): _run(tmp, "lm", token_shards, 1, f"single{n}", f"trainer.grad_accum_steps={n}")
            for n in (1, 4)}
    for engine, overrides in _engines(tmp).items():
        runs[engine, 2] = _run(tmp, "lm", token_shards, 2, engine, "trainer.grad_accum_steps=2", *overrides)
    return runs


@pytest.mark.parametrize("engine", ["single", "ddp", "fsdp", "zero1", "zero2", "zero3"])
def test_every_engine_with_accumulation_matches_single_process_lm(lm_runs, engine):
    """2 ranks x 2 accumulated micro-batches (1 process x 4 for "single") against one process
    taking each step on the whole batch."""
    single = lm_runs["single", 1]
    assert all(torch.isfinite(torch.tensor(single["losses"])))
    assert any(g.abs().sum() > 0 for g in single["grads"].values())
    _assert_same(single, lm_runs[engine, 4 if engine == "single" else 2], rtol=2e-4, atol=2e-5)


NO_DROPOUT = "model.quantizer_dropout=0"
"""Quantizer dropout draws from each rank's own stream, so only runs without it compare exactly."""
NO_GAN = "gan.enabled=false"
"""DeepSpeed wraps one model with one optimizer: the codec trains on reconstruction alone there."""


def test_gan_step_under_ddp_and_fsdp_matches_single_process(tmp_path, audio_shards):
    """The codec's GAN step (discriminator update, then generator update through the updated
    discriminator) on 2 ranks equals one process taking the whole batch: losses, gradient
    norms, first-step gradients and final weights of both models. DDP accumulates 2
    micro-batches (each turn runs its own generator forward), FSDP takes one (the
    discriminator's turn keeps the generator's forward for the generator's backward).

    Both models train with SGD here: AdamW divides each gradient element by its running
    magnitude, so for an element whose gradient is near AdamW's epsilon a rounding-level
    difference (the reduction orders differ) becomes a visible share of a step, and the
    discriminator has thousands of such elements. SGD's update is linear in the gradient, so
    the weights must agree as closely as the gradients."""
    # Learning rates small enough for a smooth descent (the generator's gradient norm is ~300).
    sgd = [NO_DROPOUT, "optim.name=sgd", "optim.lr=1e-5", "gan.optim.name=sgd", "gan.optim.lr=1e-3"]
    single = _run(tmp_path, "codec", audio_shards, 1, "single", "engine.name=ddp", *sgd)
    assert any(name.startswith("discriminator.") for name in single["params"])
    assert all(m["discriminator/grad_norm"] > 0 for m in single["metrics"])
    for engine, accum in (("ddp", 2), ("fsdp", 1)):
        run = _run(tmp_path, "codec", audio_shards, 2, engine, f"engine.name={engine}", *sgd,
                   f"trainer.grad_accum_steps={accum}")
        _assert_same(single, run, rtol=2e-4, atol=2e-5)
        disc_norms = [[m["discriminator/grad_norm"] for m in r["metrics"]] for r in (single, run)]
        assert disc_norms[0] == pytest.approx(disc_norms[1], rel=2e-4, abs=2e-5)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_balanced_gan_step_runs_on_two_ranks(tmp_path, audio_shards, engine):
    """EnCodec's balancer takes gradients w.r.t. the generated audio through the discriminator
    (autograd.grad, under DDP's inner module or FSDP2's hooks) and averages their norms over
    ranks inside the step: it must neither hang nor leave replicas apart (the script checks)."""
    run = _run(tmp_path, "codec", audio_shards, 2, engine, f"engine.name={engine}", "loss.balancer=true")
    assert all(torch.isfinite(torch.tensor(run["losses"])))
    assert all(m["balancer/ratio_mel"] > 0 for m in run["metrics"])


def test_deepspeed_matches_single_process_codec_without_gan(tmp_path, audio_shards):
    single = _run(tmp_path, "codec", audio_shards, 1, "single", "engine.name=ddp", NO_GAN, NO_DROPOUT)
    for engine in ("zero2", "zero3"):  # ZeRO-1 differs from ZeRO-2 only in when it reduces (the LM tests check it)
        run = _run(tmp_path, "codec", audio_shards, 2, engine, *_engines(tmp_path)[engine], NO_GAN, NO_DROPOUT)
        _assert_same(single, run, rtol=2e-4, atol=2e-5)


CONTROL_BYTES = 1024
"""The loop's own all-reduces (valid units, loss/metrics/flags, gradient norm) carry a few
floats; model-state collectives of the tiny LM are all larger."""


def model_state_bytes(records: list[dict], step: int, local_world_size: int) -> dict[str, int]:
    """Bytes per collective kind (and ``<kind>_inter_node``) that one rank issued in ``step``,
    control all-reduces left out."""
    from aurora.perf.comm_log import CommRecord, spans_nodes

    out: dict[str, int] = {}
    for r in map(CommRecord.from_dict, records):
        if r.step != step or r.kind not in ("all_reduce", "reduce_scatter", "all_gather") or r.bytes < CONTROL_BYTES:
            continue
        out[r.kind] = out.get(r.kind, 0) + r.bytes
        if spans_nodes(r.ranks, local_world_size):
            out[f"{r.kind}_inter_node"] = out.get(f"{r.kind}_inter_node", 0) + r.bytes
    return out


GRADIENT_REDUCTION = {"ddp": "all_reduce", "fsdp": "reduce_scatter", "zero1": "all_reduce", "zero2": "all_reduce",
                      "zero3": "reduce_scatter"}


@pytest.mark.parametrize("engine", list(GRADIENT_REDUCTION))
def test_accumulation_reduces_gradients_once_per_step(lm_runs, engine):
    """ddp (no_sync), fsdp (set_requires_gradient_sync) and ZeRO-1 (DeepSpeed's boundary) reduce
    the gradients (4 bytes per parameter) on the last of the 2 micro-batches only. ZeRO-2/3 keep
    only a partition of the gradients, so DeepSpeed reduces every micro-batch. FSDP2 and
    ZeRO-3 pad each parameter to a multiple of the world size (under 1% here)."""
    params, _ = lm_param_counts(RECIPES["lm"][1])
    reductions = 2 if engine in ("zero2", "zero3") else 1
    for step in range(2, STEPS + 1):
        reduced = model_state_bytes(lm_runs[engine, 2]["comm"], step, 2)[GRADIENT_REDUCTION[engine]]
        assert reduced == pytest.approx(reductions * 4 * params, rel=0.01)


def lm_param_counts(overrides: list[str]) -> tuple[int, int]:
    """(parameters, parameters outside the shard units: FSDP's root) of the tiny test LM."""
    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", ["run.dir=unused", "data.shards=unused", *overrides])
    model = AudioLM(cfg.model)
    total = sum(p.numel() for p in model.parameters())
    return total, total - sum(p.numel() for unit in model.shard_units() for p in unit.parameters())


@pytest.mark.parametrize("engine", list(GRADIENT_REDUCTION))
def test_collective_volumes_match_the_scale_model(lm_runs, engine):
    """What a real 2-rank run issued in steps 2-3 (step 1 also holds the script's own gathers of
    the first step's gradients, and DDP's one-off bucket rebuild) equals
    the model's prediction within 2%: FSDP2 and DeepSpeed pad partitions to multiples of the
    world size, which the model leaves out."""
    params, root = lm_param_counts(RECIPES["lm"][1])
    for step in range(2, STEPS + 1):
        real = model_state_bytes(lm_runs[engine, 2]["comm"], step, local_world_size=2)
        predicted = collective_bytes_per_step(engine, params, 4, world=2, gpus_per_node=2, grad_accum=2, step=step,
                                              root_params=root)
        for kind, nbytes in predicted.items():
            assert real.get(kind, 0) == pytest.approx(nbytes, rel=0.02), (step, kind, real, predicted)


@pytest.mark.parametrize("engine", ["fsdp", "zero2", "zero3"])
def test_dead_code_reset_keeps_replicas_equal(tmp_path, audio_shards, engine):
    """Codes are replaced at a step boundary with the same rows on every rank (the script
    fails if the replicas' weights differ afterwards), through each engine's write_full: a
    sharded DTensor, DeepSpeed's fp32 partitions (ZeRO-2) and its partitioned parameters
    (ZeRO-3). DDP's is a plain copy on a replica."""
    gan = [NO_GAN] if engine.startswith("zero") else []
    out = _run(tmp_path, "codec", audio_shards, 2, engine, *_engines(tmp_path)[engine], "quantizer.dead_code_every=1",
               *gan)
    assert sum(m["codes_reset"] for m in out["metrics"]) > 0


@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_activation_checkpointing_and_compile_change_no_number(tmp_path, lm_runs, token_shards, engine):
    """Recomputing each block in backward and compiling it (torch.compile, inductor) train the
    same model: losses, gradient norms and weights of the same engine without them."""
    both = _run(tmp_path, "lm", token_shards, 2, engine, "engine.activation_checkpointing=true", "engine.compile=true",
                "trainer.grad_accum_steps=2", *_engines(tmp_path)[engine])
    _assert_same(lm_runs[engine, 2], both, rtol=2e-4, atol=2e-5)


def test_deepspeed_runs_without_a_launcher(tmp_path, lm_runs, token_shards):
    """One bare process (no torchrun, so no LOCAL_RANK in the environment) trains under ZeRO-3."""
    bare = _run(tmp_path, "lm", token_shards, 1, "zero3_bare", *_engines(tmp_path)["zero3"])
    _assert_same(lm_runs["single", 1], bare, rtol=2e-4, atol=2e-5)
