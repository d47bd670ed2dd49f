"""Diffusion and consistency pieces against their formulas by hand and against diffusers'
schedulers; the diffusion recipe's loss against its formula at its own draws; a student on a
teacher's weights computes the teacher's function."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from aurora.config import load_config
from aurora.losses.diffusion import (DDIMSolver, Prediction, boundary_scalings, consistency_distance, predicted_noise,
                                     predicted_x0)
from aurora.models.audio_lm import encode_text
from aurora.models.dit import DiT, DiTConfig
from aurora.tasks.diffusion import BetaSchedule, DiffusionTask, DiffusionTrainConfig, NoiseConfig, example_generator


def _hand_alphas_cumprod(schedule: BetaSchedule) -> torch.Tensor:
    steps = 1000
    if schedule == BetaSchedule.linear:
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    else:  # Nichol & Dhariwal: alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2), beta capped at 0.999
        bar = [math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(steps + 1)]
        betas = torch.tensor([min(1 - bar[i + 1] / bar[i], 0.999) for i in range(steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def test_boundary_condition_and_scalings_by_hand():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 499, 999]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # f(x, 0) = 1 x + 0 F(x) = x
    scheduler = LCMScheduler()  # sigma_data 0.5, timestep_scaling 10
    for i, t in enumerate([0, 1, 499, 999]):
        hand_skip = 0.25 / ((10 * t) ** 2 + 0.25)
        hand_out = 10 * t / ((10 * t) ** 2 + 0.25) ** 0.5
        assert c_skip[i].item() == pytest.approx(hand_skip, rel=1e-6) and c_out[i].item() == pytest.approx(hand_out, rel=1e-6)
        theirs = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert (c_skip[i].item(), c_out[i].item()) == pytest.approx(theirs, rel=1e-6)
    x = torch.randn(3, 4, 5)
    assert torch.equal(c_skip[0] * x + c_out[0] * torch.randn(3, 4, 5), x)


@pytest.mark.parametrize("prediction", list(Prediction))
def test_one_ddim_solver_step_equals_diffusers_ddim(prediction):
    noise_cfg = NoiseConfig(prediction=prediction)
    alphas = noise_cfg.scheduler().alphas_cumprod
    solver = DDIMSolver(alphas, 1000, 50)
    # diffusers' DDIM at 50 steps offset to the solver's timesteps 19, 39, .., 999; below 19: alpha_bar_0
    ddim = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction.value, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=19)
    ddim.set_timesteps(50)
    assert sorted(ddim.timesteps.tolist()) == solver.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    for index in (0, 1, 24, 49):
        t = torch.full((2,), int(solver.timesteps[index]))
        ours = solver.step(predicted_x0(output, t, sample, prediction, alphas),
                           predicted_noise(output, t, sample, prediction, alphas), torch.full((2,), index))
        theirs = ddim.step(output, int(t[0]), sample, eta=0.0).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_consistency_distance_by_hand():
    p, t = torch.tensor([[[0.0, 1.0, 5.0]]]), torch.tensor([[[0.5, 1.0, -5.0]]])
    lengths = torch.tensor([2])  # the third frame is padding
    assert consistency_distance(p, t, lengths, None).item() == pytest.approx(0.25 / 2)
    huber = (math.sqrt(0.25 + 1e-6) - 1e-3 + 0.0) / 2
    assert consistency_distance(p, t, lengths, 1e-3).item() == pytest.approx(huber, rel=1e-6)


@pytest.mark.parametrize("prediction,schedule", [(Prediction.epsilon, BetaSchedule.linear),
                                                 (Prediction.v_prediction, BetaSchedule.cosine)])
def test_diffusion_loss_equals_its_formula_at_the_recipes_draws(latents, world_of_one, prediction, schedule):
    cfg = load_config(DiffusionTrainConfig, "configs/diffusion/tiny.yaml",
                      ["run.dir=unused", f"data.shards={latents}", "model.latent_dim=16",
                       f"noise.prediction={prediction.value}", f"noise.beta_schedule={schedule.value}"])
    task = DiffusionTask(cfg, world_of_one)
    torch.testing.assert_close(task.scheduler.alphas_cumprod.double(), _hand_alphas_cumprod(schedule), rtol=1e-5,
                               atol=1e-7)
    torch.manual_seed(0)
    model = DiT(cfg.model)
    with torch.no_grad():  # past adaLN-zero's zeros: a model whose output depends on its inputs
        for p in model.parameters():
            p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 16, 10, generator=g)
    batch = {"latents": x0, "lengths": torch.tensor([10, 7, 4]), "text": ["a", "bb", "ccc"], "keys": ["k0", "k1", "k2"]}
    loss, _ = task.loss(model.eval(), batch)

    alphas = _hand_alphas_cumprod(schedule).float()
    gens = [example_generator(0, "eval", key) for key in batch["keys"]]
    t = torch.cat([torch.randint(0, 1000, (1,), generator=gen) for gen in gens])
    eps = torch.stack([torch.randn(10, 16, generator=gen).T for gen in gens])
    a, s = alphas[t].sqrt()[:, None, None], (1 - alphas[t]).sqrt()[:, None, None]
    x_t = a * x0 + s * eps
    target = eps if prediction == Prediction.epsilon else a * eps - s * x0
    out = model(x_t, t, encode_text(batch["text"], 64), batch["lengths"])
    squared = [((out[i, :, :n] - target[i, :, :n]) ** 2) for i, n in enumerate([10, 7, 4])]
    hand = sum(e.sum() for e in squared) / (16 * 21)
    assert loss.item() == pytest.approx(hand.item(), rel=1e-4)


def test_zero_guidance_embedding_leaves_the_student_equal_to_its_teacher():
    torch.manual_seed(0)
    teacher = DiT(DiTConfig())
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0, 0.05)
    student = DiT(DiTConfig(guidance_embedding=True))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("guidance_embed.") for name in missing)
    x, t = torch.randn(2, 16, 12), torch.tensor([3, 800])
    text = encode_text(["a tone", "noise"], 64)
    expected = teacher(x, t, text)
    assert expected.abs().max() > 1e-3
    for w in (torch.tensor([4.0, 12.0]), torch.tensor([0.0, 7.5])):
        assert torch.equal(student(x, t, text, guidance=w), expected)
    with torch.no_grad():  # the test has teeth: a trained guidance embedding changes the output
        student.guidance_embed[2].weight.normal_(0, 0.05)
    assert not torch.allclose(student(x, t, text, guidance=torch.tensor([4.0, 12.0])), expected)
    with pytest.raises(ValueError, match="this DiT is a student: give the guidance scale w"):
        student(x, t, text)
