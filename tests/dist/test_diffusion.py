"""The diffusion teacher and the LCM student on 2 ranks (DDP, FSDP) against 1 process, and their
resume, in the session's pools.

One rank body takes 3 steps on fixed global batches of latents (unequal lengths), with a
checkpoint after step 2, then a trainer resumed from that checkpoint takes step 3 again. Checked:
the losses and final weights of 2 ranks against 1 process (2 micro-batches), the resumed step bit
for bit the straight one; for the student also its EMA target (against the EMA computed here from
the student after each step, and unlike the student) and its teacher (bit for bit the teacher
run's weights, without gradients, sharded under FSDP). The LCM's teacher is the 1-process diffusion
run.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aurora.config import load_config
from aurora.distributed import init_distributed, shutdown
from aurora.models.dit import DiT
from aurora.runs import load_model_weights, step_dirname
from aurora.tasks import get_task
from aurora.tasks.base import MAIN_PART
from aurora.tasks.lcm import TARGET, TEACHER
from aurora.train.loop import Trainer
from tests.helpers.runs import cli
from tests.helpers.steps import GLOBAL_BATCH, full_params, local_micro_batches

STEPS, SAVE_AT = 3, 2
FRAMES = 12


def latent_batch(step: int) -> dict:
    g = torch.Generator().manual_seed(2000 + step)
    return {"latents": torch.randn(GLOBAL_BATCH, 16, FRAMES, generator=g),
            "lengths": torch.randint(FRAMES // 2, FRAMES + 1, (GLOBAL_BATCH,), generator=g),
            "text": [f"tone {i} of step {step}" for i in range(GLOBAL_BATCH)],
            "keys": [f"k{step}_{i}" for i in range(GLOBAL_BATCH)]}


def _part(trainer: Trainer, name: str):
    return next(part for part in [*trainer.parts, *trainer.frozen] if part.name == name)


def steps_and_resume(task: str, overrides: list[str]) -> dict:
    task_cls = get_task(task)
    cfg = load_config(task_cls.config_class, f"configs/{task}/tiny.yaml", overrides)
    env = init_distributed(cfg.dist)

    def step(trainer: Trainer) -> float:
        micro = local_micro_batches(latent_batch(trainer.step), env.rank, env.world_size, cfg.trainer.grad_accum_steps)
        return trainer.train_step(iter(micro))["loss"]

    trainer = Trainer(cfg, task_cls, env)
    students, losses = [full_params(_part(trainer, MAIN_PART))], []
    while trainer.step < STEPS:
        losses.append(step(trainer))
        students.append(full_params(_part(trainer, MAIN_PART)))
        if trainer.step == SAVE_AT:
            assert trainer.save() and trainer.checkpointer.wait()
    frozen = {part.name: full_params(part) for part in trainer.frozen}
    held = {"teacher_grads": [n for part in trainer.frozen for n, p in part.model.named_parameters()
                              if p.requires_grad or p.grad is not None],
            "local_numel": {part.name: sum(t.numel() for t in trainer.models.local_shards(part.name))
                            for part in [*trainer.parts, *trainer.frozen]}}
    resumed = Trainer(cfg, task_cls, env)
    resumed.resume(resumed.checkpointer.dir / step_dirname(SAVE_AT))
    resumed_losses = [step(resumed) for _ in range(SAVE_AT, STEPS)]
    resumed_parts = {part.name: full_params(part) for part in [*resumed.parts, *resumed.frozen]}
    shutdown()
    if not env.is_main:
        return held
    return {**held, "losses": losses, "students": students, "frozen": frozen, "resumed_losses": resumed_losses,
            "resumed": resumed_parts}


def _args(run_dir: Path, latents: Path, *overrides: str) -> list[str]:
    return [f"run.dir={run_dir}", f"data.shards={latents}", "model.latent_dim=16", f"data.context_frames={FRAMES}",
            "data.num_workers=0", "trainer.progress_bar=false", "optim.warmup_steps=0", *overrides]


DIFFUSION = ["optim.lr=1e-2", "model.caption_dropout=0.25"]
"""A large LR: 2 steps move the zero-initialised modulations, so the teacher is not the identity."""


def _assert_same(ours: dict, theirs: dict) -> None:
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=2e-4, abs=2e-5)
    for name, value in theirs["students"][-1].items():
        torch.testing.assert_close(ours["students"][-1][name], value, rtol=2e-4, atol=2e-5, msg=name)


def _assert_resumed_bit_identical(run: dict) -> None:
    assert run["resumed_losses"] == run["losses"][SAVE_AT:]
    final = {MAIN_PART: run["students"][-1], **{n: p for n, p in run["frozen"].items() if n != TEACHER}}
    for part, params in final.items():
        assert all(torch.equal(params[name], run["resumed"][part][name]) for name in params), part


@pytest.fixture(scope="module")
def teacher_single(tmp_path_factory, latents, pool1) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("diffusion") / "single"
    run = pool1.run(steps_and_resume, "diffusion", _args(run_dir, latents, *DIFFUSION, "engine.name=ddp",
                                                         "trainer.grad_accum_steps=2"))[0].value
    assert all(torch.isfinite(torch.tensor(run["losses"])))
    return run_dir, run


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_diffusion_step_on_two_ranks_equals_one_process_and_resumes(tmp_path, latents, teacher_single, pool2, engine):
    _, single = teacher_single
    _assert_resumed_bit_identical(single)
    run = pool2.run(steps_and_resume, "diffusion", _args(tmp_path / "run", latents, *DIFFUSION,
                                                         f"engine.name={engine}"))[0].value
    _assert_same(run, single)
    _assert_resumed_bit_identical(run)


def _student_args(run_dir: Path, latents: Path, teacher_dir: Path, *overrides: str) -> list[str]:
    return _args(run_dir, latents, f"model.teacher={teacher_dir}", "lcm.ema_decay=0.5", "optim.lr=1e-3", *overrides)


@pytest.fixture(scope="module")
def student_single(tmp_path_factory, latents, teacher_single, pool1) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("lcm") / "single"
    args = _student_args(run_dir, latents, teacher_single[0], "engine.name=ddp", "trainer.grad_accum_steps=2")
    return run_dir, pool1.run(steps_and_resume, "lcm", args)[0].value


def test_lcm_step_on_two_ranks_equals_one_process_teacher_frozen_ema_followed(tmp_path, latents, teacher_single,
                                                                              student_single, pool2):
    teacher_dir, _ = teacher_single
    _, single = student_single
    ranks = [r.value for r in pool2.run(steps_and_resume, "lcm", _student_args(tmp_path / "fsdp", latents, teacher_dir,
                                                                               "engine.name=fsdp"))]
    run = ranks[0]
    _assert_same(run, single)
    torch.testing.assert_close(run["frozen"][TARGET], single["frozen"][TARGET], rtol=2e-4, atol=2e-5)
    for r in (single, run):
        _assert_resumed_bit_identical(r)

    # The teacher: bit for bit its run's weights after every step, frozen, and sharded under FSDP.
    cfg = load_config(get_task("diffusion").config_class, "configs/diffusion/tiny.yaml",
                      _args(teacher_dir, latents))
    source = DiT(cfg.model)
    load_model_weights(source, teacher_dir)
    assert any(p.abs().max() > 0 for name, p in source.state_dict().items() if "modulation" in name)
    for r in (single, run):
        assert all(torch.equal(r["frozen"][TEACHER][name], p) for name, p in source.state_dict().items())
    assert [r["teacher_grads"] for r in ranks] == [[], []]
    whole = sum(p.numel() for p in source.parameters())
    assert all(r["local_numel"][TEACHER] < whole for r in ranks)
    assert all(r["local_numel"][TARGET] == r["local_numel"][MAIN_PART] for r in ranks)

    # The EMA target: mu * target + (1 - mu) * student after each step, starting as the student.
    ema = dict(run["students"][0])
    for weights in run["students"][1:]:
        ema = {name: 0.5 * ema[name] + 0.5 * weights[name] for name in ema}
    for name, value in ema.items():
        torch.testing.assert_close(run["frozen"][TARGET][name], value, msg=name)
    assert any(not torch.equal(run["frozen"][TARGET][n], run["students"][-1][n]) for n in ema)


def _written(out: Path) -> tuple[list[dict], list[np.ndarray]]:
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return records, [np.load(out / r["latents"]) for r in records]


def test_generate_from_the_student_on_two_ranks_and_from_the_teacher(tmp_path, teacher_single, student_single, pool1,
                                                                     pool2):
    captions = ["--caption", "a low tone", "--caption", "a noise burst", "--caption", "a chirp"]
    student = [str(student_single[0]), *captions, "--trust-checkpoint", "--max-seconds", "0.2", "--cfg-scale", "6"]
    for steps in ("1", "4"):
        assert pool1.run(cli, "generate", *student, "--steps", steps, "--out", str(tmp_path / steps))[0].value == 0
    assert [r.value for r in pool2.run(cli, "generate", *student, "--steps", "4", "--batch-size", "1",
                                       "--out", str(tmp_path / "ranks"))] == [0, 0]
    (records, latents), (ranks, ranks_latents) = _written(tmp_path / "4"), _written(tmp_path / "ranks")
    assert [(r["caption"], r["seed"], r["steps"], r["sampler"]) for r in records] == [
        ("a low tone", 0, 4, "lcm"), ("a noise burst", 1, 4, "lcm"), ("a chirp", 2, 4, "lcm")]
    assert ranks == records
    for one, two in zip(latents, ranks_latents):
        assert one.shape == (16, 10) and one.dtype == np.float16
        np.testing.assert_allclose(one, two, atol=2e-3)
    assert all((tmp_path / "ranks" / r["file"]).is_file() for r in records)
    assert not np.allclose(_written(tmp_path / "1")[1][0], latents[0], atol=1e-2)  # 1 and 4 steps differ

    teacher = [str(teacher_single[0]), *captions, "--trust-checkpoint", "--max-seconds", "0.2", "--steps", "2"]
    for sampler in ("ddim", "dpm"):
        assert pool1.run(cli, "generate", *teacher, "--sampler", sampler, "--out", str(tmp_path / sampler))[0].value == 0
        assert [r["sampler"] for r in _written(tmp_path / sampler)[0]] == [sampler] * 3
