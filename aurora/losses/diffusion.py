"""Diffusion and consistency-distillation losses on latents [B, C, T] with valid lengths [B].

The noise schedule itself is diffusers' (``DDPMScheduler``: betas, ``alphas_cumprod``,
``add_noise``, ``get_velocity``); what is here is what diffusers keeps inside its LCM training
script (examples/consistency_distillation/train_lcm_distill_sd_wds.py) rather than in a library
module: the boundary scalings, the conversions between model outputs, the DDIM solver over a
skipping schedule and the pseudo-Huber distance, written out with the script's names.
"""

from enum import Enum

import torch


class Prediction(str, Enum):
    """What the network predicts: the noise (epsilon) or the velocity (v_prediction); diffusers' names."""

    epsilon = "epsilon"
    v_prediction = "v_prediction"


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, 1, T] float: 1 on valid frames, 0 on padding."""
    return (torch.arange(frames, device=lengths.device)[None] < lengths[:, None]).float()[:, None]


def masked_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The mean of values [B, C, T] over valid frames (and every channel)."""
    mask = frame_mask(lengths, values.shape[-1])
    return (values * mask).sum() / (mask.sum() * values.shape[1])


def diffusion_loss(output: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   scheduler, prediction: Prediction, lengths: torch.Tensor) -> torch.Tensor:
    """The denoising loss: the mean squared error, over valid frames, between the model's output
    and its target: the noise (epsilon), or the velocity sqrt(ᾱ) ε - sqrt(1 - ᾱ) x0 (v)."""
    if prediction == Prediction.epsilon:
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    return masked_mean((output.float() - target.float()) ** 2, lengths)


def _at(values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """values[timesteps] shaped [B, 1, 1] to broadcast over latents."""
    return values.to(timesteps.device)[timesteps].float()[:, None, None]


def boundary_scalings(timesteps: torch.Tensor, sigma_data: float = 0.5,
                      timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's c_skip and c_out at timesteps [B] (each [B, 1, 1]): c_skip(0) = 1 and c_out(0) = 0, so
    the consistency function f(x, 0) = c_skip x + c_out F(x) is x itself."""
    scaled = timestep_scaling * timesteps.float()
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip[:, None, None], c_out[:, None, None]


def predicted_x0(output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, prediction: Prediction,
                 alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The clean latents a model output implies at timesteps for the noisy sample."""
    alpha, sigma = _at(alphas_cumprod, timesteps).sqrt(), (1 - _at(alphas_cumprod, timesteps)).sqrt()
    if prediction == Prediction.epsilon:
        return (sample - sigma * output) / alpha
    return alpha * sample - sigma * output


def predicted_noise(output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, prediction: Prediction,
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise a model output implies at timesteps for the noisy sample."""
    if prediction == Prediction.epsilon:
        return output
    alpha, sigma = _at(alphas_cumprod, timesteps).sqrt(), (1 - _at(alphas_cumprod, timesteps)).sqrt()
    return alpha * output + sigma * sample


class DDIMSolver:
    """DDIM over ``ddim_timesteps`` of the ``train_timesteps``: indices 0..N-1 are timesteps
    (i + 1) k - 1 (k = train_timesteps / N), and a step from index i goes to timestep i k - 1
    (to ᾱ_0 from index 0), as the LCM script's solver."""

    def __init__(self, alphas_cumprod: torch.Tensor, train_timesteps: int, ddim_timesteps: int):
        self.skip = train_timesteps // ddim_timesteps
        self.timesteps = torch.arange(1, ddim_timesteps + 1) * self.skip - 1
        self.alphas_cumprod_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])

    def step(self, x0: torch.Tensor, noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The sample one DDIM step (eta = 0) below index [B], given the predicted x0 and noise."""
        prev = _at(self.alphas_cumprod_prev, index)
        return prev.sqrt() * x0 + (1 - prev).sqrt() * noise


def consistency_distance(prediction: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor,
                         huber_c: float | None) -> torch.Tensor:
    """The mean over valid frames of the pseudo-Huber distance sqrt((p - t)^2 + c^2) - c per
    element (``huber_c``), or of the squared error (None: L2)."""
    diff = prediction.float() - target.float()
    if huber_c is None:
        return masked_mean(diff ** 2, lengths)
    return masked_mean(torch.sqrt(diff ** 2 + huber_c ** 2) - huber_c, lengths)

