"""The codec's GAN step in one process: what reaches each optimizer, the discriminator's start
delay, the published discriminator weights. That a short run learns is tests/dist/test_codec_run.py's."""

import pytest
import torch

from aurora.config import load_config
from aurora.tasks.codec import DISCRIMINATOR, CodecTask, CodecTrainConfig, load_discriminator
from aurora.tasks.codec.recipe import _halves
from aurora.losses.gan import discriminator_loss
from aurora.train.loop import Trainer
from tests.helpers.runs import CODEC_SMALL_GAN

SMALL = ["data.segment_seconds=0.2", "data.batch_size=2", "data.num_workers=0", "trainer.progress_bar=false",
         "model.quantizer_dropout=0", "discriminator.channels=2", *CODEC_SMALL_GAN]


@pytest.fixture
def trainer(tmp_path, audio_shards, world_of_one):
    def make(*overrides: str) -> Trainer:
        cfg = load_config(CodecTrainConfig, "configs/codec/tiny.yaml",
                          [f"run.dir={tmp_path / 'run'}", f"data.shards={audio_shards}", *SMALL, *overrides])
        return Trainer(cfg, CodecTask, world_of_one)

    return make


def fixed_batch(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"audio": 0.3 * torch.randn(2, 1, 3200, generator=g), "lengths": torch.tensor([3200, 2500]),
            "keys": ["a", "b"], "text": ["", ""]}


def test_discriminator_step_sees_only_its_own_loss(trainer):
    """The generator's backward runs through the discriminator but leaves no gradient on its
    parameters (frozen while its graph is built), so the discriminator's next update is the
    gradient of its own loss alone: the leak that a zero_grad placed after the step causes."""
    t = trainer()
    disc_part = t.parts[0]
    assert disc_part.name == DISCRIMINATOR
    captured = []
    real_step = disc_part.engine.apply_step

    def capture(model, optimizer, update):
        captured.append({n: p.grad.clone() for n, p in model.module.named_parameters()})
        return real_step(model, optimizer, update)

    disc_part.engine.apply_step = capture
    t.train_step(iter([fixed_batch(0)]))
    disc = disc_part.model.module
    assert all(p.grad is None and p.requires_grad for p in disc.parameters())

    # The second step's discriminator gradient, computed by hand from the weights after step 1.
    batch = fixed_batch(1)
    codec = t.model.module
    with torch.no_grad():
        recon = codec(batch["audio"]).recon
    recon = recon * (torch.arange(3200) < batch["lengths"][:, None])[:, None, :]
    real, fake = _halves(disc(torch.cat([batch["audio"], recon])))
    expected = torch.autograd.grad(discriminator_loss(real, fake, "lsgan"), list(disc.parameters()))
    t.train_step(iter([batch]))
    for (name, got), want in zip(captured[1].items(), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=name)


def test_discriminator_starts_after_its_delay(trainer):
    t = trainer("gan.start_step=2")
    metrics = [t.train_step(iter([fixed_batch(step)])) for step in range(3)]
    assert [m["discriminator/grad_norm"] > 0 for m in metrics] == [False, False, True]
    assert ["loss/adversarial" in m for m in metrics] == [False, False, True]
    assert all(m["grad_norm"] > 0 for m in metrics)


def test_discriminator_weights_are_published(trainer, tmp_path):
    t = trainer("trainer.max_steps=1")
    t.train_step(iter([fixed_batch(0)]))
    assert t.save() and t.checkpointer.wait()
    loaded = load_discriminator(tmp_path / "run", trust=True)
    trained = t.parts[0].model.module
    for (name, a), b in zip(loaded.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(a, b), name
