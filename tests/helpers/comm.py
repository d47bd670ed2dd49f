"""Reading the collectives a run recorded (``aurora.perf.comm_log``) against the traffic model."""

from aurora.config import load_config
from aurora.models.audio_lm import AudioLM
from aurora.perf.comm_log import CommRecord, spans_nodes
from aurora.tasks.lm import LMTrainConfig

CONTROL_BYTES = 1024
"""The loop's own all-reduces (valid units, loss/metrics/flags, gradient norm) carry a few
floats; model-state collectives of the tiny LM are all larger."""


def model_state_bytes(records: list[dict], step: int, local_world_size: int) -> dict[str, int]:
    """Bytes per collective kind (and ``<kind>_inter_node``) that one rank issued in ``step``,
    control all-reduces left out."""
    out: dict[str, int] = {}
    for r in map(CommRecord.from_dict, records):
        if r.step != step or r.kind not in ("all_reduce", "reduce_scatter", "all_gather") or r.bytes < CONTROL_BYTES:
            continue
        out[r.kind] = out.get(r.kind, 0) + r.bytes
        if spans_nodes(r.ranks, local_world_size):
            out[f"{r.kind}_inter_node"] = out.get(f"{r.kind}_inter_node", 0) + r.bytes
    return out


def lm_param_counts(overrides: list[str]) -> tuple[int, int]:
    """(parameters, parameters outside the shard units: FSDP's root) of the tiny LM with ``overrides``."""
    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", ["run.dir=unused", "data.shards=unused", *overrides])
    model = AudioLM(cfg.model)
    total = sum(p.numel() for p in model.parameters())
    return total, total - sum(p.numel() for unit in model.shard_units() for p in unit.parameters())
