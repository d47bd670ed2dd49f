"""EnCodec's loss balancer: each loss gets a set share of the gradient that reaches the generator's output.

For losses l_i that depend on the model only through its output x (the generated waveform), the
balancer takes g_i = d l_i / d x and sends back into x

    G = sum_i total_norm * (w_i / sum_j w_j) * g_i / (epsilon + ema(||g_i||))

so that w_i sets the fraction of the gradient that comes from l_i, whatever the loss's own scale
(Défossez et al., "High Fidelity Neural Audio Compression", Sec. 3.4; audiocraft's
``losses/balancer.py``). With ``rescale_grads=False``, G = sum_i w_i * g_i (a plain weighted sum)
and the balancer only records the norms. Losses that do not depend on x (a VQ commitment loss)
are added by the caller outside the balancer.

||g_i|| is the L2 norm over all dims but the batch, averaged over the batch (``per_batch_item``),
or over everything. The moving average is audiocraft's (flashy's ``averager``): a decayed sum of
norms over a decayed count, so the first step's average is that step's norm, with no warm-up bias.

Under torch.distributed the norms are averaged over ranks (weighted by batch size) before they
enter the moving average: one all_reduce per call, which every rank reaches at the same point.
audiocraft averages each rank's moving average instead; both agree while per-rank batch sizes are
constant, and ours leaves the same state on every rank, so any rank's checkpoint resumes them all.
"""

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


class _InjectGrad(torch.autograd.Function):
    """Returns `value`; its backward sends `grad` (times the incoming gradient) into `output`.

    The returned value is exactly the logged loss, and the gradient exactly G, with no
    (x * G).sum() - (x * G).sum().detach() term that can overflow in half precision.
    """

    @staticmethod
    def forward(ctx, output: Tensor, grad: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.output_dtype = output.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, grad_value: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_value).to(ctx.output_dtype), None, None


class Balancer:
    """Gradient-norm loss balancer (EnCodec). See the module docstring for the formula.

    Usage in a generator step::

        surrogate = balancer.surrogate({"mel": mel, "adv": adv, "feat": feat}, audio_hat)
        (surrogate + commitment).backward()

    ``metrics`` holds, after each call, ``norm_<name>`` (the averaged gradient norm) and
    ``ratio_<name>`` (its share of the sum of the averaged norms), as detached 0-dim tensors.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        rescale_grads: bool = True,
        total_norm: float = 1.0,
        ema_decay: float = 0.999,
        per_batch_item: bool = True,
        epsilon: float = 1e-12,
        group: "dist.ProcessGroup | None" = None,
    ):
        if not weights:
            raise ValueError("Balancer needs at least one loss weight, got an empty `weights`")
        bad = {k: w for k, w in weights.items() if not (float(w) >= 0 and float(w) < float("inf"))}
        if bad:
            raise ValueError(f"loss weights must be finite and >= 0, got {bad}")
        if sum(float(w) for w in weights.values()) <= 0:
            raise ValueError(f"loss weights {dict(weights)} sum to 0: give at least one loss a positive weight")
        if not total_norm > 0:
            raise ValueError(f"total_norm must be > 0, got {total_norm}")
        if not 0 < ema_decay <= 1:
            raise ValueError(f"ema_decay must be in (0, 1], got {ema_decay}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.weights = {k: float(w) for k, w in weights.items()}
        self.rescale_grads = rescale_grads
        self.total_norm = float(total_norm)
        self.ema_decay = float(ema_decay)
        self.per_batch_item = per_batch_item
        self.epsilon = float(epsilon)
        self.group = group
        # The moving average of each loss's gradient norm: norm_sum / count, both decayed (fp32, 0-dim).
        self._norm_sum: dict[str, Tensor] = {}
        self._count: dict[str, Tensor] = {}
        self.metrics: dict[str, Tensor] = {}

    def surrogate(self, losses: Mapping[str, Tensor], output: Tensor, grad_scale: float = 1.0) -> Tensor:
        """A scalar whose backward deposits the balanced gradient G, times `grad_scale`, into `output`.

        Its value is sum_i w_i * l_i (for logging). Every loss must be a scalar that depends on the
        model only through `output`; the graphs of the losses are kept until the caller's backward.
        Under torch.distributed, every rank must call this with the same loss names.

        G's share of each item does not shrink with the batch (the norms divide the losses' 1/B
        away): G is a sum over the items. A trainer whose losses are means over the batch (each
        rank's step a mean, averaged over ranks) passes ``grad_scale=1/B``, so that the step does
        not depend on how the items are split over ranks.
        """
        names = self._check(losses, output)
        batch = output.shape[0] if self.per_batch_item else 1
        grads = [self._grad(losses[k], output) for k in names]
        with torch.no_grad():
            norms = torch.stack([self._norm(g) for g in grads])
            norms = self._average_over_ranks(norms, batch)
            ema = self._update_ema(names, norms)

            total = ema.sum()
            ratios = torch.where(total > 0, ema / total, torch.zeros_like(ema))
            self.metrics = {}
            for i, k in enumerate(names):
                self.metrics[f"norm_{k}"] = ema[i]
                self.metrics[f"ratio_{k}"] = ratios[i]

            weight_list = [self.weights[k] for k in names]
            weights = torch.tensor(weight_list, device=output.device)
            if self.rescale_grads:
                scales = self.total_norm * (weights / weights.sum()) / (self.epsilon + ema)
                # A loss whose gradient has always been zero contributes nothing (not 0 * inf = NaN
                # when epsilon is 0).
                scales = torch.where(ema > 0, scales, torch.zeros_like(scales))
            else:
                scales = weights
            balanced = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
            for scale, g in zip(scales * grad_scale, grads):
                balanced.add_(g.float() * scale)
            value = sum(w * losses[k].detach().float().reshape(()) for k, w in zip(names, weight_list))
        return _InjectGrad.apply(output, balanced, value)

    def _check(self, losses: Mapping[str, Tensor], output: Tensor) -> list[str]:
        if not losses:
            raise ValueError("surrogate() got no losses: pass a dict name -> scalar loss")
        unknown = sorted(set(losses) - set(self.weights))
        if unknown:
            raise ValueError(f"losses {unknown} have no weight in the balancer (known: {sorted(self.weights)}): "
                             "add them to the balancer's weights or leave them out of surrogate()")
        if not output.requires_grad:
            raise ValueError("`output` does not require grad: pass the model's output tensor itself, "
                             "not a detached copy")
        if self.per_batch_item and output.dim() == 0:
            raise ValueError("per_batch_item needs a batch dimension but `output` is 0-dim: "
                             "pass per_batch_item=False")
        # Weights' order, not the dict's: every rank stacks the norms the same way.
        names = [k for k in self.weights if k in losses]
        if sum(self.weights[k] for k in names) <= 0:
            raise ValueError(f"the losses passed, {names}, all have weight 0: nothing to balance")
        for k in names:
            if losses[k].numel() != 1:
                raise ValueError(f"loss {k!r} has shape {tuple(losses[k].shape)}: reduce it to a scalar")
        return names

    @staticmethod
    def _grad(loss: Tensor, output: Tensor) -> Tensor:
        """d loss / d output; zeros when the loss does not depend on output."""
        if not loss.requires_grad:
            return torch.zeros_like(output)
        # retain_graph: losses share subgraphs (the discriminator's forward on the fake), and the
        # caller's backward still needs the generator's graph behind output.
        (grad,) = torch.autograd.grad(loss.reshape(()), output, retain_graph=True, allow_unused=True)
        return torch.zeros_like(output) if grad is None else grad

    def _norm(self, grad: Tensor) -> Tensor:
        grad = grad.float()
        if self.per_batch_item:
            return grad.reshape(grad.shape[0], -1).norm(dim=1).mean()
        return grad.norm()

    def _average_over_ranks(self, norms: Tensor, batch: int) -> Tensor:
        """Batch-size-weighted mean of each norm over ranks (identity outside torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return norms
        packed = torch.cat([norms * batch, norms.new_full((1,), float(batch))])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.group)
        return packed[:-1] / packed[-1]

    def _update_ema(self, names: list[str], norms: Tensor) -> Tensor:
        out = []
        for name, norm in zip(names, norms):
            zero = norm.new_zeros(())
            norm_sum = self._norm_sum.get(name, zero).to(norm.device)
            count = self._count.get(name, zero).to(norm.device)
            self._norm_sum[name] = self.ema_decay * norm_sum + norm
            self._count[name] = self.ema_decay * count + 1
            out.append(self._norm_sum[name] / self._count[name])
        return torch.stack(out)

    def state_dict(self) -> dict:
        """The moving averages' state, as CPU tensors (the weights and options come from the config)."""
        return {
            "norm_sum": {k: v.detach().cpu().clone() for k, v in self._norm_sum.items()},
            "count": {k: v.detach().cpu().clone() for k, v in self._count.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        if set(state) != {"norm_sum", "count"}:
            raise ValueError(f"balancer state has keys {sorted(state)}, expected ['count', 'norm_sum']: "
                             "pass what Balancer.state_dict() returned")
        norm_sum, count = state["norm_sum"], state["count"]
        if set(norm_sum) != set(count):
            raise ValueError(f"balancer state is inconsistent: norm_sum has {sorted(norm_sum)} but count has "
                             f"{sorted(count)}")
        unknown = sorted(set(norm_sum) - set(self.weights))
        if unknown:
            raise ValueError(f"balancer state has losses {unknown} that are not in the weights "
                             f"{sorted(self.weights)}: the config's loss weights changed since the checkpoint")
        self._norm_sum = {k: torch.as_tensor(v, dtype=torch.float32).clone() for k, v in norm_sum.items()}
        self._count = {k: torch.as_tensor(v, dtype=torch.float32).clone() for k, v in count.items()}
