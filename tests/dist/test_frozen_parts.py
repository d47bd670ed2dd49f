"""Frozen parts on every engine: a tiny LM student learns a frozen teacher's next-code
distributions (KL to its logits) and keeps an EMA copy of itself, on 2 ranks (4 for HSDP)
against 1 process.

Checked on each engine: the losses and final weights of the 1-process run (student and EMA,
rtol 2e-4 / atol 2e-5, as the parity tests); the teacher's weights bit for bit those of its
source, without gradients on any rank; the frozen parts sharded where the engine shards (FSDP2,
HSDP, ZeRO-3: fewer local elements than the whole model); the EMA equal to the EMA computed here
from the student's weights after each step; and a run resumed from its step-2 checkpoint ending
bit for bit where the straight run ends, the EMA included. One process checks that a resume
refuses a teacher whose weights changed since the checkpoint.
"""

import copy
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from omegaconf import MISSING

from aurora.config import load_config
from aurora.distributed import init_distributed, shutdown
from aurora.models.audio_lm import AudioLM
from aurora.runs import load_model_weights, step_dirname, weights_id
from aurora.tasks.base import MAIN_PART, FrozenPartSpec, PartModels
from aurora.tasks.lm import LMTask, LMTrainConfig
from aurora.train.loop import Trainer
from tests.helpers.runs import LM_SMALL_MODEL
from tests.helpers.steps import engine_overrides, full_params, global_batches, local_micro_batches

CONFIG = "configs/lm/tiny.yaml"
STEPS, SAVE_AT = 3, 2
TEACHER, EMA = "teacher", "ema"
DECAY = 0.5
"""Large enough a share of each step for the EMA to move visibly in 3 steps."""


@dataclass
class DistillConfig(LMTrainConfig):
    teacher: str = MISSING
    """A checkpoint of the teacher: an LM of the student's shape."""
    ema_decay: float = DECAY
    """Decay of the student's EMA per optimizer step."""


class DistillTask(LMTask):
    """The student (the main model) minimises KL(teacher || student) over every next-code
    distribution; after each step its EMA follows it."""

    config_class = DistillConfig

    def frozen_parts(self, model: AudioLM) -> list[FrozenPartSpec]:
        teacher, ema = AudioLM(self.cfg.model), copy.deepcopy(model)
        return [FrozenPartSpec(TEACHER, teacher, teacher.shard_units(), updated=False, source=self.cfg.teacher),
                FrozenPartSpec(EMA, ema, ema.shard_units(), updated=True)]

    def part_loss(self, part: str, models: PartModels, batch: dict, carry: dict, step: int):
        text, codes = self._text(batch, models[MAIN_PART].training), batch["codes"]
        student = models[MAIN_PART](text, codes)
        with torch.no_grad():
            teacher = models[TEACHER](text, codes)
        kl = F.kl_div(F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1), log_target=True,
                      reduction="none").sum(-1)
        return kl.mean(), {}

    def loss_units(self, batch: dict) -> float:
        """The KL is a mean over every position, padding included."""
        return float(batch["codes"][:, 0].numel())

    def after_step(self, models: PartModels, step: int) -> dict[str, float]:
        models.ema_update(EMA, MAIN_PART, self.cfg.ema_decay)
        return {}


def _config(overrides: list[str]) -> DistillConfig:
    return load_config(DistillConfig, CONFIG, overrides)


def _step(trainer: Trainer, cfg: DistillConfig, env) -> float:
    """One optimizer step on the fixed global batch of the trainer's step."""
    batch = global_batches("tokens", cfg, trainer.step)
    micro = local_micro_batches(batch, env.rank, env.world_size, cfg.trainer.grad_accum_steps)
    return trainer.train_step(iter(micro))["loss"]


def _part(trainer: Trainer, name: str):
    return next(part for part in [*trainer.parts, *trainer.frozen] if part.name == name)


def distill_and_resume(overrides: list[str]) -> dict:
    """``STEPS`` steps with a checkpoint after step ``SAVE_AT``, then the steps after it again by
    a trainer resumed from that checkpoint. Every rank returns how it holds the frozen parts;
    rank 0 also the numbers and weights."""
    cfg = _config(overrides)
    env = init_distributed(cfg.dist)
    trainer = Trainer(cfg, DistillTask, env)
    student = _part(trainer, MAIN_PART)
    students, losses = [full_params(student)], []
    while trainer.step < STEPS:
        losses.append(_step(trainer, cfg, env))
        students.append(full_params(student))
        if trainer.step == SAVE_AT:
            assert trainer.save() and trainer.checkpointer.wait()
            saved_ema = full_params(_part(trainer, EMA))
    teacher = _part(trainer, TEACHER)
    held = {"teacher_grads": [n for n, p in teacher.model.named_parameters() if p.requires_grad or p.grad is not None],
            "local_numel": {name: sum(t.numel() for t in trainer.models.local_shards(name))
                            for name in (TEACHER, EMA)}}
    out = {"losses": losses, "students": students, "teacher": full_params(teacher),
           "ema": full_params(_part(trainer, EMA)), "saved_ema": saved_ema}

    resumed = Trainer(cfg, DistillTask, env)
    resumed.resume(resumed.checkpointer.dir / step_dirname(SAVE_AT))
    out["resumed_losses"] = [_step(resumed, cfg, env) for _ in range(SAVE_AT, STEPS)]
    out["resumed_student"] = full_params(_part(resumed, MAIN_PART))
    out["resumed_ema"] = full_params(_part(resumed, EMA))
    shutdown()
    return {**held, **out} if env.is_main else held


def resume_refusal(overrides: list[str]) -> str:
    """The message of a resume from the latest checkpoint that refuses ("" if none refused)."""
    cfg = _config(overrides)
    env = init_distributed(cfg.dist)
    trainer = Trainer(cfg, DistillTask, env)
    try:
        trainer.resume(trainer.checkpointer.latest())
    except RuntimeError as e:
        return str(e)
    finally:
        shutdown()
    return ""


def _write_teacher(path: Path, seed: int) -> Path:
    """An LM of the test's shape, initialised from ``seed``, as a checkpoint of its main model."""
    torch.manual_seed(seed)
    lm = AudioLM(_config(["run.dir=x", "teacher=x", *LM_SMALL_MODEL]).model)
    shutil.rmtree(path, ignore_errors=True)
    with warnings.catch_warnings():  # DCP warns that it runs without a process group: we ask it to
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": lm.state_dict()}, checkpoint_id=path, no_dist=True)
    return path


def _args(run_dir: Path, shards: Path, teacher: Path, *overrides: str) -> list[str]:
    return [f"run.dir={run_dir}", f"data.shards={shards}", f"teacher={teacher}", "run.trust_checkpoint=true", *LM_SMALL_MODEL,
            "trainer.progress_bar=false", "optim.warmup_steps=0", "optim.lr=1e-3", "generation.num_samples=0",
            *overrides]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return _write_teacher(tmp_path_factory.mktemp("teacher") / "ckpt", seed=123)


@pytest.fixture(scope="module")
def single(tmp_path_factory, token_shards, teacher, pool1) -> dict:
    """The reference: one process taking each step on the whole batch (DDP)."""
    args = _args(tmp_path_factory.mktemp("single"), token_shards, teacher, "engine.name=ddp")
    run = pool1.run(distill_and_resume, args)[0].value
    assert all(torch.isfinite(torch.tensor(run["losses"])))
    assert run["losses"][0] > 0  # the student does not start as the teacher
    return run


def _hand_ema(students: list[dict], decay: float) -> dict:
    ema = dict(students[0])
    for weights in students[1:]:
        ema = {name: decay * ema[name] + (1 - decay) * weights[name] for name in ema}
    return ema


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "hsdp", "zero1", "zero2", "zero3"])
def test_frozen_teacher_and_ema_on_every_engine(tmp_path, token_shards, teacher, single, pool2, pool2x2, engine):
    if engine == "hsdp":
        pool, overrides = pool2x2, ["engine.name=fsdp", "engine.fsdp.hsdp=true"]
    else:
        pool, overrides = pool2, engine_overrides(tmp_path)[engine]
    ranks = [r.value for r in pool.run(distill_and_resume, _args(tmp_path / "run", token_shards, teacher, *overrides))]
    run = ranks[0]
    assert run["losses"] == pytest.approx(single["losses"], rel=2e-4, abs=2e-5)
    for ours, theirs in ((run["students"][-1], single["students"][-1]), (run["ema"], single["ema"])):
        for name in theirs:
            torch.testing.assert_close(ours[name], theirs[name], rtol=2e-4, atol=2e-5, msg=name)

    source = AudioLM(_config(_args("x", token_shards, teacher)).model)
    load_model_weights(source, teacher)
    assert run["teacher"].keys() == source.state_dict().keys()
    assert all(torch.equal(run["teacher"][name], p) for name, p in source.state_dict().items())
    assert [r["teacher_grads"] for r in ranks] == [[]] * len(ranks)

    whole = sum(p.numel() for p in source.parameters())
    sharded = engine in ("fsdp", "hsdp", "zero3")
    for r in ranks:
        for name in (TEACHER, EMA):
            assert (r["local_numel"][name] < whole) if sharded else (r["local_numel"][name] == whole), (name, r)

    hand = _hand_ema(run["students"], DECAY)
    assert any(not torch.equal(run["ema"][name], run["students"][-1][name]) for name in hand)
    for name in hand:
        torch.testing.assert_close(run["ema"][name], hand[name], msg=name)

    loaded = AudioLM(source.config)
    load_model_weights(loaded, tmp_path / "run" / "checkpoints" / step_dirname(SAVE_AT), part=EMA)
    assert all(torch.equal(p, run["saved_ema"][name]) for name, p in loaded.state_dict().items())
    assert run["resumed_losses"] == run["losses"][SAVE_AT:]
    for final, resumed in ((run["students"][-1], run["resumed_student"]), (run["ema"], run["resumed_ema"])):
        assert all(torch.equal(final[name], resumed[name]) for name in final)


def test_resume_refuses_a_teacher_whose_weights_changed(tmp_path, token_shards, pool1):
    teacher = _write_teacher(tmp_path / "teacher", seed=123)
    args = _args(tmp_path / "run", token_shards, teacher)
    pool1.run(distill_and_resume, args)
    model = AudioLM(_config(args).model)
    ids = []
    for seed in (123, 7):  # the run's teacher, then other weights at the same place
        load_model_weights(model, _write_teacher(teacher, seed))
        ids.append(weights_id(model))
    assert ids[0] != ids[1]
    refused = pool1.run(resume_refusal, args)[0].value
    assert (f"was trained with frozen part '{TEACHER}' at weights {ids[0]}, but this job loaded {ids[1]} from "
            f"{teacher}: its source changed since the run started") in refused, refused
    assert "Put the original weights back to resume, or train with the new ones in a new run" in refused
    with pytest.raises(LookupError, match=rf"holds no part '{TEACHER}' \(it holds: {EMA}\); a frozen part that never"):
        load_model_weights(model, tmp_path / "run", part=TEACHER)
