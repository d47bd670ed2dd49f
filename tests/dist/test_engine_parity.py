"""Distributed runs against a single-process run of the same global batches (gloo, CPU).

2-process DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 must give the losses, gradient norms and final
weights of a 1-process run (and DDP/FSDP2 its first-step gradients; DeepSpeed keeps its reduced
gradients in its own partitions), within rtol 2e-4 / atol 2e-5: the engines only change how
the same sums are split and reduced. Accumulated micro-batches must equal one step on the
large batch, on every engine, and reduce gradients once per step where the engine can.

The collectives each engine issued (recorded by ``aurora.perf.comm_log``) are checked against
the scale model's prediction for the same configuration (``aurora.perf.traffic``).
"""

import pytest
import torch

from aurora.data import build_loader
from aurora.data.config import DataConfig
from aurora.perf.traffic import collective_bytes_per_step
from data_prep.synth_tokens import write_token_shards
from tests.helpers.comm import lm_param_counts, model_state_bytes
from tests.helpers.runs import (CODEC_SMALL_GAN, GAN_SGD, NO_DROPOUT, STRAIGHT_STEPS, cli, lm_train_args, read_metrics,
                                weights)
from tests.helpers.steps import STEPS, assert_same_steps, engine_overrides, fixed_batch_steps


RECIPES = {
    "lm": ("configs/lm/tiny.yaml", ["data.context_frames=24", "model.backbone.num_hidden_layers=2",
                                    "model.backbone.hidden_size=64", "model.backbone.intermediate_size=128"]),
    "codec": ("configs/codec/tiny.yaml", ["data.segment_seconds=0.2"]),
}


def _run(pool, tmp_path, recipe: str, shards, name: str, *overrides: str, steps=fixed_batch_steps) -> dict:
    """``steps`` (``fixed_batch_steps`` or a wrapper of it) of ``recipe`` on every rank of ``pool``;
    rank 0's result."""
    config, base = RECIPES[recipe]
    args = [f"run.dir={tmp_path / name}", f"data.shards={shards}", "trainer.progress_bar=false", *base, *overrides]
    return pool.run(steps, config, args)[0].value


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory, token_shards, pool1, pool2) -> dict:
    """The tiny LM, 3 steps: one process with 1 and 4 micro-batches, and every engine on 2
    processes with 2 micro-batches each."""
    tmp = tmp_path_factory.mktemp("lm_runs")
    runs = {("single", n): _run(pool1, tmp, "lm", token_shards, f"single{n}", f"trainer.grad_accum_steps={n}")
            for n in (1, 4)}
    for engine, overrides in engine_overrides(tmp).items():
        runs[engine, 2] = _run(pool2, tmp, "lm", token_shards, engine, "trainer.grad_accum_steps=2", *overrides)
    return runs


@pytest.mark.parametrize("engine", ["single", "ddp", "fsdp", "zero1", "zero2", "zero3"])
def test_every_engine_with_accumulation_matches_single_process_lm(lm_runs, engine):
    """2 ranks x 2 accumulated micro-batches (1 process x 4 for "single") against one process
    taking each step on the whole batch."""
    single = lm_runs["single", 1]
    assert all(torch.isfinite(torch.tensor(single["losses"])))
    assert any(g.abs().sum() > 0 for g in single["grads"].values())
    assert_same_steps(single, lm_runs[engine, 4 if engine == "single" else 2])


def test_every_engine_opens_the_same_ranges(lm_runs):
    """The NVTX ranges of a step (recorded by ``tests.helpers.ranges``), on every engine with 2
    micro-batches: the step's data, the one collective of its valid units, forward and backward
    of each micro-batch, the part's collective, then its update; none nested, all closed."""
    expected = [(0, f"aurora/{name}") for name in ("data", "comm/units_all_reduce", "model/forward", "model/backward",
                                                  "model/forward", "model/backward", "model/all_reduce",
                                                  "model/optimizer")]
    for engine in ("ddp", "fsdp", "zero1", "zero2", "zero3"):
        assert lm_runs[engine, 2]["ranges"] == [expected] * STEPS, engine


def test_clip_grad_value_and_fsdp_options_keep_the_single_process_numbers(tmp_path, token_shards, lm_runs, pool1,
                                                                         pool2):
    """``trainer.clip_grad_value`` clips each element of the step's whole gradient: on DDP's
    replicas and FSDP's shards (2 ranks x 2 micro-batches) as in one process, where it changes the
    run. FSDP2 without resharding after forward and with explicit prefetching computes the same."""
    clip = ["trainer.clip_grad_value=2e-3", "trainer.clip_grad_norm=null"]
    single = _run(pool1, tmp_path, "lm", token_shards, "single", *clip)
    with pytest.raises(AssertionError):  # it clipped: beyond the tolerance the engines are held to
        assert_same_steps(lm_runs["single", 1], single)
    for engine in ("ddp", "fsdp"):
        run = _run(pool2, tmp_path, "lm", token_shards, engine, f"engine.name={engine}", "trainer.grad_accum_steps=2", *clip)
        assert_same_steps(single, run)
    options = _run(pool2, tmp_path, "lm", token_shards, "fsdp_options", "engine.name=fsdp", "trainer.grad_accum_steps=2",
                   "engine.fsdp.reshard_after_forward=false", "engine.fsdp.prefetch=1")
    assert_same_steps(lm_runs["single", 1], options)


NO_GAN = "gan.enabled=false"
"""The codec on reconstruction alone: one part, one optimizer."""



@pytest.fixture(scope="module")
def gan_single(tmp_path_factory, audio_shards, pool1) -> dict:
    """The GAN codec step (``GAN_SGD``) in one process taking the whole batch."""
    single = _run(pool1, tmp_path_factory.mktemp("gan"), "codec", audio_shards, "single", "engine.name=ddp", *GAN_SGD)
    assert any(name.startswith("discriminator.") for name in single["params"])
    assert all(m["discriminator/grad_norm"] > 0 for m in single["metrics"])
    updates = [name for _, name in single["ranges"][0] if name.endswith("/optimizer")]
    assert updates == ["aurora/discriminator/optimizer", "aurora/model/optimizer"]
    return single


def test_gan_step_under_ddp_and_fsdp_matches_single_process(tmp_path, audio_shards, gan_single, pool2):
    """The codec's GAN step (discriminator update, then generator update through the updated
    discriminator) on 2 ranks equals one process taking the whole batch: losses, gradient
    norms, first-step gradients and final weights of both models. DDP accumulates 2
    micro-batches (each turn runs its own generator forward), FSDP takes one (the
    discriminator's turn keeps the generator's forward for the generator's backward)."""
    for engine, accum in (("ddp", 2), ("fsdp", 1)):
        run = _run(pool2, tmp_path, "codec", audio_shards, engine, f"engine.name={engine}", *GAN_SGD,
                   f"trainer.grad_accum_steps={accum}")
        assert_same_steps(gan_single, run)
        if accum == 1:  # the same ranges as one process's step: each part's forward to update, in order
            assert run["ranges"] == gan_single["ranges"]


@pytest.mark.parametrize("engine, accum", [("zero2", 2), ("zero3", 1)])
def test_gan_step_under_deepspeed_matches_single_process(tmp_path, audio_shards, gan_single, pool2, engine, accum):
    """The same GAN step with one DeepSpeed engine per model: ZeRO-2 accumulates 2 micro-batches
    (each engine marks its own accumulation boundary); under ZeRO-3 the generator's forward of
    the discriminator's turn outlives the discriminator's step, and the generator's loss runs
    through the discriminator's partitioned parameters (gathered by its hooks, frozen) without
    reducing a gradient for them."""
    run = _run(pool2, tmp_path, "codec", audio_shards, engine, *engine_overrides(tmp_path)[engine], *GAN_SGD,
               f"trainer.grad_accum_steps={accum}")
    assert_same_steps(gan_single, run)


@pytest.fixture(scope="module")
def balanced_single(tmp_path_factory, audio_shards, pool1) -> dict:
    """The GAN step with EnCodec's balancer (``GAN_SGD``), in one process taking the whole batch."""
    return _run(pool1, tmp_path_factory.mktemp("balanced"), "codec", audio_shards, "single", "engine.name=ddp",
                "loss.balancer=true", *GAN_SGD)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_balanced_gan_step_matches_single_process(tmp_path, audio_shards, balanced_single, pool2, engine):
    """EnCodec's balancer takes gradients w.r.t. the generated audio through the discriminator
    (autograd.grad, under DDP's inner module or FSDP2's hooks) and averages their per-item norms
    over ranks inside the step: on 2 ranks it gives one process's steps, neither hanging nor
    leaving replicas apart (the step runner checks)."""
    run = _run(pool2, tmp_path, "codec", audio_shards, engine, f"engine.name={engine}", "loss.balancer=true", *GAN_SGD)
    assert all(m["balancer/ratio_mel"] > 0 for m in run["metrics"])
    assert_same_steps(balanced_single, run)


def test_deepspeed_matches_single_process_codec_without_gan(tmp_path, audio_shards, pool1, pool2):
    single = _run(pool1, tmp_path, "codec", audio_shards, "single", "engine.name=ddp", NO_GAN, NO_DROPOUT)
    for engine in ("zero2", "zero3"):  # ZeRO-1 differs from ZeRO-2 only in when it reduces (the LM tests check it)
        run = _run(pool2, tmp_path, "codec", audio_shards, engine, *engine_overrides(tmp_path)[engine], NO_GAN,
                   NO_DROPOUT)
        assert_same_steps(single, run)


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


def steps_recording_resets(config: str, overrides: list[str]) -> dict | None:
    """3 ``fixed_batch_steps`` of the codec; on rank 0 also its codebooks, read whole just before and
    just after each step's dead-code reset that replaced codes."""
    from aurora.tasks.codec.dead_codes import DeadCodeReset

    real, resets = DeadCodeReset.maybe_reset, {}

    def recording(self, step, codebooks, engine):
        before = [engine.read_full(p) for p in codebooks]
        replaced = real(self, step, codebooks, engine)
        if replaced:
            resets[step] = before, [engine.read_full(p) for p in codebooks]
        return replaced

    DeadCodeReset.maybe_reset = recording
    try:
        out = fixed_batch_steps(config, overrides)
    finally:
        DeadCodeReset.maybe_reset = real
    return None if out is None else {**out, "resets": resets}


@pytest.mark.parametrize("engine", ["fsdp", "zero2", "zero3"])
def test_dead_code_reset_writes_every_shard_and_the_optimizer_keeps_it(tmp_path, audio_shards, pool2, engine):
    """Codes are replaced after step 2 with the same rows on every rank (the step runner fails if
    the replicas differ) through each engine's write_full: a sharded DTensor, DeepSpeed's fp32
    partitions (ZeRO-2) and its partitioned parameters (ZeRO-3), in the GAN codec (a smaller GAN,
    ``CODEC_SMALL_GAN``); DDP's is a plain copy on a replica. The whole codebooks, gathered from
    every rank's shard, hold the new rows, and still do after step 3's optimizer step, which moves
    them by no more than its learning rate (a write the optimizer's own copy missed would bring
    the old rows back)."""
    out = _run(pool2, tmp_path, "codec", audio_shards, engine, *engine_overrides(tmp_path)[engine],
               "quantizer.dead_code_every=2", *CODEC_SMALL_GAN, steps=steps_recording_resets)
    assert list(out["resets"]) == [2]
    before, after = out["resets"][2]
    rows = 0
    for stage, (old, new) in enumerate(zip(before, after)):
        final = out["params"][f"quantizer.quantizers.{stage}.codebook.weight"]
        reset = (old != new).any(dim=1)
        rows += int(reset.sum())
        # Step 3's AdamW moves each element by about its learning rate, 1.5e-4 (warm-up).
        torch.testing.assert_close(final[reset], new[reset], rtol=0, atol=1e-3)
        assert ((final[reset] - old[reset]).abs().amax(dim=1) > 1e-2).all(), stage
        torch.testing.assert_close(final[~reset], old[~reset], rtol=0, atol=1e-3)
    assert rows == out["metrics"][1]["codes_reset"] > 0


def cli_counting_graphs(*argv: str, recompile_limit: int | None = None) -> tuple[int, int, int]:
    """``aurora train`` in a pool worker, from dynamo's empty caches: its exit code, and how many
    graphs and graph breaks torch.compile made. A compiled unit that hits dynamo's cache limit
    (``recompile_limit`` if given, as the limit a run starts from; and would run eager from there
    on) fails the run."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    limit = {} if recompile_limit is None else {"recompile_limit": recompile_limit}
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, **limit):
        code = cli(*argv)
    return code, counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


@pytest.mark.parametrize("engine", ["fsdp", "zero2"])
def test_activation_checkpointing_and_compile_change_no_number(tmp_path, lm_straight, token_shards, pool2, engine):
    """Recomputing each block in backward and compiling it (torch.compile) train the same model:
    the straight run's (eager FSDP) losses, gradient norms and final weights, within the rounding
    that decomposed ops reorder. The backend is ``aot_eager_decomp_partition``: inductor's
    decompositions and its min-cut partitioner (which decides what backward recomputes), on eager
    kernels. Inductor's code generation on a CPU is C++, not the triton kernels a GPU runs, and
    took 45 s of this test (``tools/gpu_check.sh`` compiles with inductor on the GPU). Through
    ``aurora train``, not ``fixed_batch_steps``: under its collective log (a TorchDispatchMode)
    torch.compile does not compile, which the graph count checks."""
    run = tmp_path / engine
    args = lm_train_args(run, token_shards, STRAIGHT_STEPS, f"trainer.checkpoint_every={STRAIGHT_STEPS}",
                         "engine.activation_checkpointing=true", "engine.compile=true",
                         "engine.compile_backend=aot_eager_decomp_partition", *engine_overrides(tmp_path)[engine])
    results = [r.value for r in pool2.run(cli_counting_graphs, *args)]
    assert [code for code, _, _ in results] == [0, 0]
    assert all(graphs > 0 for _, graphs, _ in results), results
    assert_same_steps(_as_steps(lm_straight), _as_steps(run))


def test_compile_traces_dynamic_batches_once(tmp_path, pool1):
    """Under ``data.batching=dynamic`` both the batch size and the length change from batch to
    batch; each compiled block is traced once, with symbolic sizes. (Dynamo's default traces the
    first batch's shape, then again for the second: two graphs.) Tracing is dynamo's, the same under
    every backend: ``aot_eager`` spares inductor's CPU code generation."""
    shards = write_token_shards(tmp_path / "shards", frames=40, min_frames=8)
    dynamic = ["data.batching=dynamic", "data.max_seconds_per_batch=3", "data.context_frames=40"]
    loader = build_loader(DataConfig(shards=str(shards), batching="dynamic", max_seconds_per_batch=3,
                                     context_frames=40, num_workers=0), "tokens", rank=0, world_size=1, seed=0)
    shapes = [tuple(batch["codes"].shape) for batch, _ in zip(loader, range(6))]
    assert len({b for b, _, _ in shapes}) > 1 and len({t for _, _, t in shapes}) > 1, shapes
    args = lm_train_args(tmp_path / "run", shards, 6, "engine.name=ddp", "engine.compile=true",
                         "engine.compile_backend=aot_eager", *dynamic)
    assert pool1.run(cli_counting_graphs, *args)[0].value == (0, 1, 0)


def test_dynamic_batches_of_the_trainers_loader_train_as_one_process(tmp_path, pool1, pool2):
    """``data.batching=dynamic`` in the Trainer: each rank's loader batches clips of similar
    length up to a padded-seconds budget, so the ranks' batches differ in examples and frames
    within a step. FSDP on 2 ranks, each stepping on its Trainer's own loader, equals one process
    taking each step on one batch of both ranks' examples (read by loaders of 2 ranks): losses,
    gradient norms, first-step gradients, final weights. Weighting each rank's mean loss alike
    (not by its valid frames) fails it."""
    shards = write_token_shards(tmp_path / "shards", frames=40, min_frames=8)
    dynamic = ["data.batching=dynamic", "data.max_seconds_per_batch=3", "data.context_frames=40", "data.num_workers=0"]
    data = DataConfig(shards=str(shards), batching="dynamic", max_seconds_per_batch=3, context_frames=40, num_workers=0)
    shapes = [[tuple(batch["codes"].shape) for batch, _ in zip(build_loader(data, "tokens", rank, 2, seed=0), range(STEPS))]
              for rank in (0, 1)]
    assert any(a[0] != b[0] for a, b in zip(*shapes)) and any(a[2] != b[2] for a, b in zip(*shapes)), shapes
    config, base = RECIPES["lm"]
    args = [f"data.shards={shards}", "trainer.progress_bar=false", *base, *dynamic]
    single = pool1.run(fixed_batch_steps, config, [*args, f"run.dir={tmp_path / 'single'}"], data_ranks=2)[0].value
    fsdp = pool2.run(fixed_batch_steps, config, [*args, f"run.dir={tmp_path / 'fsdp'}", "engine.name=fsdp"],
                     data_ranks=2)[0].value
    assert_same_steps(single, fsdp)


def test_compiled_gan_codec_has_no_graph_break_and_trains_the_eager_numbers(tmp_path, audio_shards, pool1):
    """The GAN codec with every unit compiled: no graph break (an fp32 region once broke every
    graph it was in), no unit past dynamo's cache, and the eager run's losses and gradient norms.
    Sub-discriminators of one kind share a forward, each instance its own graphs: the preset's 5
    period and 3 STFT ones passed dynamo's default limit of 8 per code object. The smaller GAN
    (``CODEC_SMALL_GAN``, 2 of each, half the compile time) makes the same test against a limit of
    1, from which the engine must raise it. With ``aot_eager``, dynamo's graphs and AOTAutograd's
    backward run on eager kernels: inductor would take minutes per graph on a CPU (the GPU check
    compiles with it)."""
    args = ["train", "configs/codec/tiny.yaml", f"data.shards={audio_shards}", "data.segment_seconds=0.2",
            "data.batch_size=4", "trainer.max_steps=2", "trainer.log_every=1", "trainer.progress_bar=false",
            "trainer.checkpoint_every=2", *CODEC_SMALL_GAN]
    assert pool1.run(cli, *args, f"run.dir={tmp_path / 'eager'}")[0].value == 0
    code, graphs, breaks = pool1.run(cli_counting_graphs, *args, f"run.dir={tmp_path / 'compiled'}", "engine.compile=true",
                                     "engine.compile_backend=aot_eager", recompile_limit=1)[0].value
    assert (code, breaks) == (0, 0) and graphs > 0
    for eager, compiled in zip(read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled"), strict=True):
        for key in ("loss", "grad_norm", "discriminator/loss", "discriminator/grad_norm"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-5), key


def _as_steps(run_dir) -> dict:
    """A finished run's losses, metrics and final weights, shaped as ``fixed_batch_steps``'s result."""
    metrics = read_metrics(run_dir)
    return {"losses": [m["loss"] for m in metrics], "metrics": metrics, "grads": {}, "params": weights(run_dir)}


def test_deepspeed_runs_without_a_launcher(tmp_path, lm_runs, token_shards, pool1):
    """One bare process (no torchrun, so no LOCAL_RANK in the environment) trains under ZeRO-3."""
    bare = _run(pool1, tmp_path, "lm", token_shards, "zero3_bare", *engine_overrides(tmp_path)["zero3"])
    assert_same_steps(lm_runs["single", 1], bare)


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "zero1", "zero2", "zero3"])
def test_bf16_trains_every_recipe_on_every_engine(tmp_path, token_shards, audio_shards, lm_runs, gan_single, pool2,
                                                 engine):
    """bf16 autocast on 2 ranks, the LM and the GAN codec (whose discriminators compute their
    spectrograms in fp32 inside a sharded unit): the steps run, and their losses are the fp32
    run's within bf16's rounding, yet not equal to them (bf16 did compute). On an AMX Xeon this
    is the run that oneDNN's wrong bf16 convolutions gave a NaN discriminator loss
    (``aurora.precision``)."""
    overrides = [*engine_overrides(tmp_path)[engine], "engine.precision=bf16"]
    runs = {"lm": (lm_runs[engine, 2], _run(pool2, tmp_path, "lm", token_shards, f"lm_{engine}", *overrides,
                                             "trainer.grad_accum_steps=2")),
            "codec": (gan_single, _run(pool2, tmp_path, "codec", audio_shards, f"codec_{engine}", *overrides, *GAN_SGD))}
    for recipe, (fp32, bf16) in runs.items():
        assert bf16["losses"] == pytest.approx(fp32["losses"], rel=2e-2), recipe
        assert bf16["losses"] != fp32["losses"], recipe
        assert all(p.dtype == torch.float32 for p in bf16["params"].values()), recipe  # fp32 master weights


def linear_output_dtypes_as_on_cuda(config: str, overrides: list[str]) -> list[str]:
    """One step of ``fixed_batch_steps`` with ``torch.is_autocast_enabled()`` answering for the CPU
    as it answers for CUDA (without an argument it asks about CUDA only), so that DeepSpeed's
    forward takes the decision it takes on a GPU; the dtypes of every Linear's outputs."""
    real = torch.is_autocast_enabled
    dtypes = set()

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear):
            dtypes.add(str(output.dtype))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    torch.is_autocast_enabled = lambda device_type=None: real("cpu" if device_type is None else device_type)
    try:
        fixed_batch_steps(config, overrides, steps=1)
    finally:
        torch.is_autocast_enabled = real
        hook.remove()
    return sorted(dtypes)


def test_deepspeed_bf16_computes_in_bf16_where_cuda_would_switch_autocast_off(tmp_path, token_shards, pool2):
    """DeepSpeed switches off an autocast it finds around its forward on CUDA unless its config
    enables its own (``torch_autocast``): the generated config does, so the LM's layers compute
    in bf16 under ZeRO-2."""
    config, base = RECIPES["lm"]
    args = [f"run.dir={tmp_path}", f"data.shards={token_shards}", "trainer.progress_bar=false", *base,
            "engine.name=deepspeed", "engine.deepspeed.zero_stage=2", "engine.precision=bf16"]
    assert [r.value for r in pool2.run(linear_output_dtypes_as_on_cuda, config, args)] == [["torch.bfloat16"]] * 2
