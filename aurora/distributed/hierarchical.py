"""Hierarchical sync: gradients all-reduced inside each node every step (the engine's group is
the node), parameters averaged across nodes every ``sync.outer_every`` steps.

The cross-node exchange is an all-reduce with this rank's peers of the same local rank on the
other nodes: each peer holds the same part of the model, so averaging over that group averages
every node's copy. Under FSDP each rank averages its own shard. Under DDP the ranks of a node
hold the same replica, so each averages only its 1/ranks-per-node slice across nodes and the
node all-gathers the slices over its fast links: the inter-node network carries the model once
per node, not once per GPU (a two-level all-reduce). With
``outer_optimizer=nesterov`` the average is not taken as is: the change since the last outer
step is an outer gradient, stepped by SGD with Nesterov momentum (DiLoCo, Douillard et al.
2023) from the last outer step's weights.

Between outer steps each node's optimizer sees its own gradients, so its state (AdamW's
moments) differs from node to node. DCP keeps one copy of what looks replicated, so this
state is saved per rank, with the outer optimizer's, in ``state_dict``.

torch's ``PeriodicModelAverager`` does the plain average, but it rebinds ``param.data`` to a
slice of a flat buffer, which cuts FSDP2's DTensor off its local shard; this averages in place.
"""

import torch
import torch.distributed as dist
from torch import nn

from aurora.config.schema import OuterOptimizer, SyncConfig
from aurora.perf.spans import span
from aurora.perf.step_clock import COMM


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


class HierarchicalSync:
    def __init__(self, cfg: SyncConfig, cross_node_group: dist.ProcessGroup, replica_group: dist.ProcessGroup | None,
                 model: nn.Module, optimizer: torch.optim.Optimizer):
        """``replica_group``: the node's ranks when each holds the whole model (DDP), else None."""
        self.cfg = cfg
        self.group = cross_node_group
        self.replica_group = replica_group
        self.optimizer = optimizer
        self.params = [_local(p.detach()) for p in model.parameters()]
        self.nesterov = cfg.outer_optimizer == OuterOptimizer.nesterov
        self.anchor = [p.clone() for p in self.params] if self.nesterov else []
        """Weights after the last outer step (nesterov)."""
        self.momentum = [torch.zeros_like(p) for p in self.params] if self.nesterov else []
        self.outer_steps = 0

    def due(self, step: int) -> bool:
        return step % self.cfg.outer_every == 0

    @torch.no_grad()
    def outer_step(self) -> None:
        """Average the parameters across nodes (then the outer optimizer step); collective over
        the cross-node group, so every rank calls it at the same step."""
        with span("comm/hierarchical_sync", COMM):
            self._average()

    def _average(self) -> None:
        flat = torch.cat([p.reshape(-1) for p in self.params])
        numel = flat.numel()
        if dist.get_world_size(self.group) == 1:
            pass  # one node: nothing to average (the outer optimizer still steps)
        elif self.replica_group is None:
            dist.all_reduce(flat, group=self.group)
        else:
            slices = dist.get_world_size(self.replica_group)
            flat = torch.nn.functional.pad(flat, (0, -numel % slices))
            mine = flat.view(slices, -1)[dist.get_rank(self.replica_group)].clone()
            dist.all_reduce(mine, group=self.group)
            dist.all_gather_into_tensor(flat, mine, group=self.replica_group)
        flat /= dist.get_world_size(self.group)
        average = flat[:numel].split([p.numel() for p in self.params])
        for i, p in enumerate(self.params):
            avg = average[i].view_as(p)
            if self.nesterov:
                delta = self.anchor[i] - avg  # the outer gradient
                self.momentum[i].mul_(self.cfg.outer_momentum).add_(delta)
                self.anchor[i].sub_(self.cfg.outer_lr * (delta + self.cfg.outer_momentum * self.momentum[i]))
                avg = self.anchor[i]
            p.copy_(avg)
        self.outer_steps += 1

    def _inner_state(self) -> list[dict[str, torch.Tensor]]:
        """This rank's optimizer state tensors, per parameter in the optimizer's order."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return [{k: _local(v) for k, v in self.optimizer.state[p].items() if torch.is_tensor(v)} for p in params]

    def state_dict(self) -> dict:
        return {"outer_steps": self.outer_steps, "anchor": self.anchor, "momentum": self.momentum,
                "inner": self._inner_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore after the optimizer's own (DCP) state was loaded. On another layout (an elastic
        resume) the saved tensors do not fit: the outer optimizer starts afresh from the weights,
        and every node goes on from the optimizer state DCP kept."""
        self.outer_steps = state["outer_steps"]
        mine, saved = self._inner_state(), state["inner"]
        fits = ([a.shape for a in state["anchor"]] == [a.shape for a in self.anchor]
                and [{k: v.shape for k, v in s.items()} for s in saved] == [{k: v.shape for k, v in s.items()} for s in mine])
        if not fits:
            return
        for dst, src in zip(self.anchor + self.momentum, state["anchor"] + state["momentum"]):
            dst.copy_(src)
        for dst, src in zip(mine, saved):
            for key, value in src.items():
                dst[key].copy_(value)
