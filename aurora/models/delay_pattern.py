"""MusicGen's delay interleaving of K parallel codebooks (Copet et al. 2023, audiocraft).

Codebook k is shifted right by k steps, so one decoding step emits codebook 0 of frame t,
codebook 1 of frame t-1, ... and every codebook is predicted after the coarser ones of the
same frame. For K=3, T=4 (S = special token):

    a0 a1 a2 a3 S  S
    S  b0 b1 b2 b3 S
    S  S  c0 c1 c2 c3
"""

import torch


def _delayed_index(K: int, T: int, device: torch.device) -> torch.Tensor:
    """[K, T]: the delayed time step holding codebook k of frame t, i.e. t + k."""
    return torch.arange(T, device=device) + torch.arange(K, device=device)[:, None]


def build_delay_pattern(codes: torch.Tensor, special_token: int) -> torch.Tensor:
    """codes [B, K, T] -> [B, K, T + K - 1], codebook k shifted right by k, gaps = special_token."""
    B, K, T = codes.shape
    delayed = codes.new_full((B, K, T + K - 1), special_token)
    return delayed.scatter_(2, _delayed_index(K, T, codes.device).expand(B, K, T), codes)


def revert_delay_pattern(delayed: torch.Tensor) -> torch.Tensor:
    """delayed [B, K, T + K - 1] -> codes [B, K, T]; the inverse of `build_delay_pattern`."""
    B, K, S = delayed.shape
    T = S - K + 1
    if T < 0:
        raise ValueError(f"{K} delayed codebooks need at least {K - 1} steps, got {S}")
    return delayed.gather(2, _delayed_index(K, T, delayed.device).expand(B, K, T))


def delay_pattern_mask(K: int, T: int, device: torch.device | None = None) -> torch.Tensor:
    """BoolTensor [K, T + K - 1], True where the delayed sequence holds a real code."""
    mask = torch.zeros(K, T + K - 1, dtype=torch.bool, device=device)
    return mask.scatter_(1, _delayed_index(K, T, mask.device), True)
