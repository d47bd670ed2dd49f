"""The benchmarks run end to end on tiny sizes and print their tables, each on the ranks it is
launched with (``torchrun`` for the engines bench, one process for the others).

No timing is asserted: only that every row is there, and the numbers that must not depend on
speed (ddp's own ratio, losses that must agree).
"""

from tests.helpers.runs import run_main

TINY_LM = ["data.context_frames=16", "model.backbone.num_hidden_layers=1", "data.batch_size=2"]


def table(out: str, names: tuple[str, ...]) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in names}


def bench(pool, module: str, *argv: str) -> str:
    """What rank 0 printed running ``python -m MODULE ARGV`` on the ranks of ``pool``."""
    results = pool.run(run_main, module, *argv)
    assert [r.value for r in results] == [0] * pool.world
    return results[0].output


def test_engines_bench_prints_a_row_per_engine(pool2):
    out = bench(pool2, "tools.bench.engines", "--engines", "ddp,zero1", "--steps", "2", "--blocks", "2",
                "--warmup", "1", *TINY_LM)
    rows = table(out, ("ddp", "zero1"))
    assert list(rows) == ["ddp", "zero1"], out
    assert rows["ddp"][1] == "1.000"
    assert float(rows["zero1"][0]) > 0
    assert float(rows["zero1"][3]) < 1e-4  # same losses: both engines trained the same model side by side


def test_lm_throughput_bench_prints_both_loops(pool1):
    out = bench(pool1, "tools.bench.lm_throughput", "--preset", "tiny", "--seq", "32", "--batch", "2",
                "--steps", "2", "--blocks", "2", "--warmup", "1")
    rows = table(out, ("aurora", "transformers"))
    assert list(rows) == ["aurora", "transformers"], out
    for ms, _, tokens_per_s, *mfu, first_loss in rows.values():
        assert float(ms) > 0 and float(tokens_per_s) > 0
        assert " ".join(mfu) == "absent (CPU)"
    assert rows["aurora"][-1] == rows["transformers"][-1]  # fp32, same weights, same batch
    assert "device: cpu" in out and "precision: fp32" in out
    assert float(out.split("ratio aurora/transformers (tokens/s): ")[1].split()[0]) > 0


def test_codec_step_bench_prints_aurora_rows(pool1):
    """The aurora side alone (the DAC side needs its own 5 GB environment: run by hand)."""
    out = bench(pool1, "tools.bench.codec_step", "--no-reference", "--batch", "1", "--seconds", "0.1",
                "--steps", "1", "--blocks", "1", "--warmup", "1", "model.channels=4", "model.latent_dim=16",
                "model.decoder_channels=32", "discriminator.channels=2", "discriminator.fft_sizes=[256,128]",
                "discriminator.periods=[2]")
    rows = table(out, ("aurora",))
    assert list(rows) == ["aurora"], out
    assert float(rows["aurora"][0]) > 0 and rows["aurora"][2] == "-"


def test_tokenize_bench_prints_single_and_batched(pool1):
    out = bench(pool1, "tools.bench.tokenize_throughput", "--clips", "6", "--repeats", "1")
    rows = table(out, ("single", "masked@2s"))
    assert list(rows) == ["single", "masked@2s"], out
    assert "ratio batched/single" in out


def test_dpo_step_cost_bench_prints_every_step_kind(pool1):
    out = bench(pool1, "tools.bench.dpo_step_cost", "--pairs", "2", "--frames", "8", "--repeats", "1",
                "model.backbone.num_hidden_layers=1")
    rows = table(out, ("sft", "dpo", "dpo-live"))
    assert list(rows) == ["sft", "dpo", "dpo-live"], out
    assert rows["sft"][1] == "1.000" and all(float(ms) > 0 for ms, _ in rows.values())
