"""Print, as JSON on rank 0, where every rank sits: its node, and the ranks of its node-local
(shard) group and of its cross-node (replicate) group in aurora's node mesh.

    torchrun ... node_groups.py OUT.json
"""

import json
import sys

import torch.distributed as dist

from aurora.config.schema import DistConfig
from aurora.distributed import init_distributed, shutdown
from aurora.distributed.mesh import REPLICATE, SHARD, node_mesh


def main() -> None:
    env = init_distributed(DistConfig())
    mesh = node_mesh(env)
    mine = {"rank": env.rank, "node_rank": env.node_rank, "num_nodes": env.num_nodes,
            "local_rank": env.local_rank, "local_world_size": env.local_world_size,
            "shard": dist.get_process_group_ranks(mesh.get_group(SHARD)),
            "replicate": dist.get_process_group_ranks(mesh.get_group(REPLICATE))}
    everyone = [None] * env.world_size
    dist.all_gather_object(everyone, mine)
    if env.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(everyone, f)
    dist.barrier()
    shutdown()


if __name__ == "__main__":
    main()
