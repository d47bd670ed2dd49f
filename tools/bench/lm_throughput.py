"""Tokens/s and MFU of aurora's LM training step against a plain `transformers` Qwen2 loop.

    python -m tools.bench.lm_throughput [--preset tiny|mid|qwen2-0.5b] [--seq 2048] [--batch 4]
        [--engine ddp|fsdp|deepspeed] [--compile] [--bf16] [--steps 10] [--blocks 3]
        [--warmup 3] [key=value ...]

The GPU target's run, which prints everything it needs (device, precision, tokens/s of both,
their ratio, MFU of both):

    python -m tools.bench.lm_throughput --preset qwen2-0.5b --seq 2048 --batch 4 --bf16 --compile

Presets: aurora's TRANSFORMER_PRESETS, plus ``mid`` (4 x 256, vocab 8192) for CPUs. Under
``torchrun --nproc-per-node N`` every rank trains on the same batch, the transformers model
wrapped in DDP; tokens/s are summed over ranks, MFU is per device.

What is compared. aurora's side is aurora's Qwen2 (``aurora.models.transformer.Qwen2ForCausalLM``,
the backbone every aurora LM is built on, with its vocabulary head) trained by aurora's real
``Trainer.train_step`` through the chosen engine (wrapping, bf16, per-block compile,
clipping, AdamW, LR schedule, the loop's collectives), next-token cross-entropy being the task.
The other side is ``transformers.Qwen2ForCausalLM`` built from the same ``TransformerConfig``
(mapped to ``Qwen2Config`` as in tests/unit/models/test_transformer_qwen2.py, sdpa attention, no KV cache)
with the same initial weights, trained by the loop a user writes: forward with labels,
backward, clip to norm 1, ``torch.optim.AdamW``, under ``torch.autocast`` for bf16 and, with
``--compile``, ``torch.compile`` of the whole model. Both see the same batch of random token
ids each step, on the same device, in one process.

Why the backbone and not the full AudioLM: the AudioLM adds n_q codebook embeddings, n_q
heads and a delay-pattern loss that have no counterpart in transformers. A Qwen2ForCausalLM
whose vocabulary matched the heads' FLOPs would do different work (one large head instead
of n_q small ones, one embedding lookup instead of a sum of n_q), so the ratio would mix model
differences with implementation ones. With the same architecture on both sides the two
models compute the same function (same parameter names; their logits are checked equal in
tests), so the FLOP count is exactly the same and the ratio measures aurora's implementation
and machinery alone; the AudioLM runs this very Qwen2Model, so what is found here carries over.

FLOPs per token: ``aurora.perf.flops.transformer_train_flops_per_token`` (6N + 12LhS +
6hV, forward + backward, the full SxS score matrix as PaLM counts it). MFU = FLOPs per token
x tokens/s per device / ``aurora.perf.mfu.peak_flops(device, precision)``: absent on a CPU or
an unknown GPU, never guessed.

Timing: ``--warmup`` untimed steps each (compilation), then ``--blocks`` rounds of
``--steps`` aurora steps followed by ``--steps`` transformers steps, so machine noise hits
both alike; a step is timed from its start until its loss is on the host (and the device is
synchronised). Medians over all timed steps are reported (with the range of the per-block
medians, to show the noise), and the tokens/s ratio aurora / transformers. The loss
of each loop's first step is printed too: in fp32 the two are equal (same weights, same
batch), a check that both train the same model.
"""

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aurora.config import TrainConfig, load_config, to_yaml
from aurora.distributed import DistEnv, barrier, init_distributed
from aurora.perf.flops import transformer_train_flops_per_token
from aurora.models.transformer import TRANSFORMER_PRESETS, Qwen2ForCausalLM, TransformerConfig
from aurora.tasks.base import Task
from aurora.train.loop import Trainer
from aurora.perf.mfu import mfu, peak_flops
from aurora.train.rng import seed_everything
from data_prep.synth_tokens import write_token_shards
from tools.bench.engines import shared_workspace

PRESETS = {
    **TRANSFORMER_PRESETS,
    # About a minute on one CPU thread at --seq 256 --batch 4 --steps 4 --blocks 5.
    "mid": TransformerConfig(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True),
}
TARGET = "GPU target: qwen2-0.5b, --bf16 --compile: MFU >= 45% and aurora/transformers >= 1.3"


@dataclass
class CausalLMConfig(TrainConfig):
    task: str = "causal_lm"
    model: TransformerConfig = field(default_factory=TransformerConfig)


class CausalLMTask(Task):
    """Next-token cross-entropy of aurora's Qwen2ForCausalLM on token ids ``batch["codes"]`` [B, S]
    (the loop's key for token batches), computed as transformers computes it."""

    config_class = CausalLMConfig
    data_kind = "tokens"

    def build_model(self) -> nn.Module:
        return Qwen2ForCausalLM(self.cfg.model)

    def shard_units(self, model: Qwen2ForCausalLM) -> list[nn.Module]:
        return list(model.model.layers)

    def loss(self, model: nn.Module, batch: dict):
        ids = batch["codes"]
        return causal_lm_loss(model(ids), ids), {}

    def batch_items(self, batch: dict) -> dict[str, float]:
        return {"tokens": float(batch["codes"].numel())}


def causal_lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, S, V] predicting ids shifted by one, in fp32."""
    labels = F.pad(ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model shape")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank and step")
    parser.add_argument("--engine", default="ddp", choices=["ddp", "fsdp", "deepspeed"], help="aurora's engine")
    parser.add_argument("--compile", action="store_true", help="torch.compile (aurora: per block; transformers: the model)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights and optimizer state)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop and block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per loop")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first (>= 1)")
    parser.add_argument("overrides", nargs="*", help="aurora config overrides, key=value (e.g. engine.deepspeed.zero_stage=3)")
    args = parser.parse_args(argv)
    if min(args.seq, args.batch, args.steps, args.blocks, args.warmup) < 1:
        parser.error("--seq, --batch, --steps, --blocks and --warmup must be >= 1")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TransformersLoop:
    """The plain loop: transformers' Qwen2ForCausalLM, AdamW, clip, optional autocast and compile."""

    def __init__(self, cfg: CausalLMConfig, env: DistEnv, bf16: bool, compile: bool):
        seed_everything(cfg.run.seed)
        weights = Qwen2ForCausalLM(cfg.model).state_dict()  # what aurora's Trainer starts from
        hf_config = transformers.Qwen2Config(**dataclasses.asdict(cfg.model), use_sliding_window=False,
                                             use_cache=False, attn_implementation="sdpa")
        model = transformers.Qwen2ForCausalLM(hf_config)
        model.load_state_dict(weights, strict=True)
        model.to(env.device).train()
        if env.world_size > 1:
            model = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        self.params = list(model.parameters())
        self.model = torch.compile(model) if compile else model
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.device = env.device
        self.bf16 = bf16

    def step(self, ids: torch.Tensor) -> float:
        ids = ids.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def timed(step, count: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds and loss of ``count`` calls of ``step()``."""
    times, losses = [], []
    for _ in range(count):
        started = time.perf_counter()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - started)
    return times, losses


def describe_mfu(value: float | None, device: torch.device) -> str:
    if value is not None:
        return f"{100 * value:.1f}%"
    if device.type != "cuda":
        return f"absent ({device.type.upper()})"
    return f"absent (no peak known for {torch.cuda.get_device_name(device)})"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base = CausalLMConfig(model=PRESETS[args.preset])
    base.run.dir = base.data.shards = "set below"
    base.trainer.progress_bar = False
    base.trainer.max_steps = args.warmup + args.blocks * args.steps
    base.data.num_workers = 0
    env = init_distributed(base.dist)
    with shared_workspace(env) as tmp:
        if env.is_main:  # only for the Trainer's loader, which is never iterated
            write_token_shards(tmp / "tokens", num_clips=2 * env.world_size, per_shard=2)
            (tmp / "bench.yaml").write_text(to_yaml(base))
        barrier()
        cfg = load_config(CausalLMConfig, tmp / "bench.yaml", [
            f"run.dir={tmp / 'run'}", f"data.shards={tmp / 'tokens'}", f"engine.name={args.engine}",
            f"engine.precision={'bf16' if args.bf16 else 'fp32'}", f"engine.compile={args.compile}", *args.overrides])
        trainer = Trainer(cfg, CausalLMTask, env)
        plain = TransformersLoop(cfg, env, args.bf16, args.compile)
        ids = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1000))
        batch = {"codes": ids, "lengths": torch.full((args.batch,), args.seq),
                 "keys": [f"k{i}" for i in range(args.batch)]}
        loops = {"aurora": lambda: trainer.train_step(iter([batch]))["loss"],
                 "transformers": lambda: plain.step(ids)}
        first_loss = {name: timed(step, args.warmup, env.device)[1][0] for name, step in loops.items()}
        times = {name: [] for name in loops}
        for _ in range(args.blocks):
            for name, step in loops.items():
                barrier()
                times[name].append(timed(step, args.steps, env.device)[0])
        params = sum(p.numel() for p in plain.params)
    if not env.is_main:
        return
    precision = "bf16" if args.bf16 else "fp32"
    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    flops_per_token = transformer_train_flops_per_token(cfg.model, args.seq, lm_head=True)
    peak = peak_flops(env.device, precision)
    c = cfg.model
    print(f"lm_throughput: aurora Trainer (engine {cfg.engine.name.value}) vs transformers {transformers.__version__} "
          f"Qwen2ForCausalLM loop, torch {torch.__version__}, world {env.world_size}")
    print(f"device: {device_name}; precision: {precision}{' autocast' if args.bf16 else ''}; "
          f"compile: {'yes' if args.compile else 'no'}")
    print(f"model: preset {args.preset}, {params / 1e6:.1f} M parameters ({c.num_hidden_layers} layers x "
          f"{c.hidden_size}, vocab {c.vocab_size}); {args.batch} x {args.seq} tokens per rank and step; "
          f"{args.blocks} blocks x {args.steps} steps after {args.warmup} warm-up steps")
    print(f"training FLOPs per token: {flops_per_token:.4g} (aurora.perf.flops); peak: "
          f"{'none' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'} ({precision})")
    print(f"{'loop':<13} {'ms/step':>9} {'block medians (ms)':>19} {'tokens/s':>11} {'MFU':>14} {'first loss':>11}")
    tokens_per_s = {}
    for name, blocks in times.items():
        median = statistics.median(t for block in blocks for t in block)
        spread = [statistics.median(block) * 1e3 for block in blocks]
        tokens_per_s[name] = env.world_size * args.batch * args.seq / median
        util = mfu(flops_per_token * tokens_per_s[name] / env.world_size, peak)
        print(f"{name:<13} {median * 1e3:9.2f} {f'{min(spread):.1f}-{max(spread):.1f}':>19} "
              f"{tokens_per_s[name]:11.1f} {describe_mfu(util, env.device):>14} {first_loss[name]:11.4f}")
    print(f"ratio aurora/transformers (tokens/s): {tokens_per_s['aurora'] / tokens_per_s['transformers']:.3f}")
    print(TARGET)


if __name__ == "__main__":
    main()
