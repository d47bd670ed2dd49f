"""Device meshes and node-local groups: which ranks shard together, which replicate.

Ranks are node-major (torchrun and slurm's block distribution number the processes of one node
contiguously), so the mesh ``arange(world).view(num_nodes, ranks_per_node)`` has one node per
row: its ``shard`` dimension is the GPUs of one node (fast links), its ``replicate`` dimension
one rank per node (the inter-node network).
"""

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from aurora.distributed.env import DistEnv

REPLICATE, SHARD = "replicate", "shard"


def flat_mesh(env: DistEnv) -> DeviceMesh:
    """Every rank in one dimension (plain data parallelism, FSDP over the whole world)."""
    return init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=(SHARD,))


def node_mesh(env: DistEnv) -> DeviceMesh:
    """The 2-D ``(replicate, shard)`` mesh: rows are nodes. Its ``shard`` sub-mesh is this rank's
    node (HSDP's shard group, hierarchical sync's every-step group); its ``replicate`` sub-mesh is
    this rank's peers on the other nodes (one per node, same local rank)."""
    per_node = env.local_world_size
    if env.world_size % per_node or env.num_nodes * per_node != env.world_size:
        raise RuntimeError(f"world size {env.world_size} is not {env.num_nodes} nodes x {per_node} ranks: every "
                           f"node must run the same number of processes (torchrun --nproc-per-node)")
    return init_device_mesh(env.device.type, (env.num_nodes, per_node), mesh_dim_names=(REPLICATE, SHARD))
