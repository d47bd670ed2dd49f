"""Running aurora as a user does (real launches, or the CLI in this process) and reading what a
run wrote."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

LM_SMALL_MODEL = ["model.backbone.num_hidden_layers=2", "model.backbone.hidden_size=64",
                  "model.backbone.intermediate_size=128", "data.context_frames=24"]
"""The tiny LM at test size: 2 blocks of width 64, on 24 frames."""
LM_SMALL = [*LM_SMALL_MODEL, "data.batch_size=4", "data.num_workers=1", "optim.decay_steps=8", "optim.warmup_steps=2",
            "trainer.log_every=1", "trainer.checkpoint_every=4", "trainer.progress_bar=false",
            "generation.num_samples=0"]
"""``LM_SMALL_MODEL`` in a training run: batches of 4, a checkpoint every 4 steps."""
CODEC_SMALL_GAN = ["discriminator.periods=[2,3]", "discriminator.fft_sizes=[256,128]", "loss.mel_n_ffts=[64,256]",
                   "loss.mel_n_mels=[10,40]"]
"""The tiny codec's GAN with fewer sub-discriminators and mel scales (every kind still there), for
tests of the step's mechanics rather than of the recipe's numbers."""
NO_DROPOUT = "model.quantizer_dropout=0"
"""Quantizer dropout draws from each rank's own stream, so only runs without it compare exactly."""
GAN_SGD = [NO_DROPOUT, *CODEC_SMALL_GAN, "optim.name=sgd", "optim.lr=1e-5", "gan.optim.name=sgd",
           "gan.optim.lr=1e-3"]
"""Both models of the GAN step on SGD, with learning rates small enough for a smooth descent (the
generator's gradient norm is ~300 with the preset's GAN), and the smaller GAN (``CODEC_SMALL_GAN``: every
kind of sub-discriminator, fewer of each): the parity of the step is checked, not the recipe's
numbers.

AdamW divides each gradient element by its running magnitude, so for an element whose gradient is
near AdamW's epsilon a rounding-level difference (the reduction orders differ) becomes a visible
share of a step, and the discriminator has thousands of such elements. SGD's update is linear in
the gradient, so the weights must agree as closely as the gradients."""
STRAIGHT_STEPS = 8
"""Steps of the shared uninterrupted LM run (the ``lm_straight`` fixture)."""
CODEC_RUN_STEPS = 100
"""Steps of the shared short GAN codec run (the ``codec_run`` fixture), evaluated at its end."""


def codec_run_args(run_dir, shards) -> list[str]:
    """``aurora train`` arguments of the shared codec run: the tiny GAN codec, one process,
    0.3 s crops in batches of 4, held-out evaluation on ``shards`` at its last step."""
    return ["train", "configs/codec/tiny.yaml", f"run.dir={run_dir}", f"data.shards={shards}",
            f"trainer.max_steps={CODEC_RUN_STEPS}", f"trainer.checkpoint_every={CODEC_RUN_STEPS}",
            "trainer.progress_bar=false", "data.segment_seconds=0.3", "data.batch_size=4", "data.num_workers=0",
            f"data.eval_shards={shards}", f"trainer.eval_every={CODEC_RUN_STEPS}", "trainer.eval_batches=2"]


def lm_train_args(run_dir, shards, max_steps: int, *overrides: str) -> list[str]:
    """``aurora train`` arguments of the small LM (``LM_SMALL``), overrides last."""
    return ["train", "configs/lm/tiny.yaml", f"run.dir={run_dir}", f"data.shards={shards}",
            f"trainer.max_steps={max_steps}", *LM_SMALL, *overrides]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cmd(args: list[str], nproc: int = 0, env: dict | None = None, check: bool = True,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python ...args`` as a new process (under torchrun with ``nproc`` processes when
    nproc > 0): for tests of what a launch does."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    prefix = [sys.executable]
    if nproc:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    result = subprocess.run(prefix + args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"command failed ({result.returncode}): {' '.join(args)}\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result


def run_main(module: str, *argv: str) -> int:
    """``python -m MODULE ARGV`` in this process (or on a pool rank): the module's
    ``main(argv)``; its exit code."""
    import importlib

    try:
        code = importlib.import_module(module).main(list(argv))
    except SystemExit as e:
        code = e.code
    return 0 if code is None else code


def cli(*argv: str) -> int:
    """``aurora ARGV`` in this process (or on a pool rank); its exit code."""
    return run_main("aurora.cli", *argv)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def sample_key_records(run_dir: Path) -> list[list[dict]]:
    """Each rank's ``trainer.record_sample_keys`` log, in rank order: its records ({"step", "keys"})."""
    paths = sorted((Path(run_dir) / "sample_keys").glob("rank_*.jsonl"))
    return [[json.loads(line) for line in path.read_text().splitlines()] for path in paths]


def keys_by_step(run_dir: Path) -> dict[int, list[str]]:
    """The keys every rank trained on at each step (``trainer.record_sample_keys``)."""
    steps: dict[int, list[str]] = {}
    for records in sample_key_records(run_dir):
        for record in records:
            steps.setdefault(record["step"], []).extend(record["keys"])
    return steps


def weights(run_dir: Path, step: int | None = None, part: str | None = None) -> dict[str, torch.Tensor]:
    """The model (or extra part ``part``) of a run's latest checkpoint, or of step ``step``, as a
    plain state dict, loaded the way evaluation and export load it (any engine's checkpoint)."""
    from aurora.config import load_config, peek_task
    from aurora.distributed import DistEnv
    from aurora.runs import load_model_weights
    from aurora.tasks import get_task

    run_dir = Path(run_dir)
    task_cls = get_task(peek_task(run_dir / "config.yaml"))
    task = task_cls(load_config(task_cls.config_class, run_dir / "config.yaml"),
                    DistEnv(0, 1, 0, 1, 0, 1, torch.device("cpu"), "gloo"))
    model = task.build_model() if part is None else next(p.model for p in task.extra_parts() if p.name == part)
    where = run_dir if step is None else run_dir / "checkpoints" / f"step_{step:08d}"
    load_model_weights(model, where, part=part)
    return model.state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def exported_weights(run_dir: Path, out: Path) -> dict[str, torch.Tensor]:
    """``aurora export RUN --format safetensors`` of a run's latest checkpoint, in this process
    (one CPU process, whatever wrote it), read back by safetensors alone."""
    from safetensors.torch import load_file

    assert cli("export", str(run_dir), "--format", "safetensors", "--out", str(out), "--trust-checkpoint") == 0
    return load_file(Path(out) / "model.safetensors")
