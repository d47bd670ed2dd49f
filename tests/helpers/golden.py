"""Golden losses: the first losses of every recipe's tiny config, kept in
``tests/assets/losses/<recipe>.json``. A change that is not meant to change numerics leaves them
bit-identical on the machine kind that recorded them (its CPU, its torch); on another CPU kind,
whose kernels round differently, they agree within ``OTHER_MACHINE_RTOL``.

    python -m tests.helpers.golden --write     # record them anew (say why in the commit)
"""

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from tests.helpers.shards import make_audio_shards, make_token_shards

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "losses"
STEPS = 6
OTHER_MACHINE_RTOL = 1e-3
"""Six steps of training on another CPU kind (AVX-512 vs AVX2 kernels, MKL's code paths on
Intel vs AMD) move the losses by rounding only: far less than any change of the numerics."""

COMMON = ["trainer.log_every=1", "trainer.progress_bar=false", "data.num_workers=0", f"trainer.max_steps={STEPS}",
          f"trainer.checkpoint_every={STEPS}", "engine.name=ddp"]
RECIPES = {
    "lm": ("configs/lm/tiny.yaml", "tokens", ["data.batch_size=4", "generation.num_samples=0"], ["loss", "grad_norm"]),
    "codec": ("configs/codec/tiny.yaml", "audio", ["data.batch_size=4", "data.segment_seconds=0.2"],
              ["loss", "grad_norm", "discriminator/loss", "discriminator/grad_norm"]),
}
"""recipe: (config, shard kind, overrides, metrics recorded per step)."""


def machine() -> dict[str, str]:
    """What decides the rounding of a CPU run: torch's build and the CPU's kernels."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu}


def run_recipe(recipe: str, run_dir: Path, shards: Path) -> dict[str, list[float]]:
    """Train ``recipe``'s tiny config for STEPS steps in this process; its recorded metrics."""
    from aurora.cli import main

    config, _, overrides, keys = RECIPES[recipe]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the rounding of a reduction depends on how it is split
    try:
        main(["train", config, f"run.dir={run_dir}", f"data.shards={shards}", *COMMON, *overrides])
    finally:
        torch.set_num_threads(threads)
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {key: [line[key] for line in lines] for key in keys}


def path(recipe: str) -> Path:
    return ASSETS / f"{recipe}.json"


def _write() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shards = {"audio": make_audio_shards(Path(tmp) / "audio"), "tokens": make_token_shards(Path(tmp) / "tokens")}
        for recipe, (config, kind, overrides, _) in RECIPES.items():
            values = run_recipe(recipe, Path(tmp) / recipe, shards[kind])
            record = {"config": config, "overrides": COMMON + overrides, "recorded_on": machine(), "metrics": values}
            path(recipe).write_text(json.dumps(record, indent=1) + "\n")
            print(f"{path(recipe)}: {values}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="record the golden losses anew")
    if parser.parse_args().write:
        _write()
    else:
        parser.print_help()
