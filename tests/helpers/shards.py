"""The small shard sets the tests train on, built by the real data_prep tools."""

from pathlib import Path

from data_prep.synth_tokens import write_token_shards


def make_audio_shards(root: Path) -> Path:
    """24 synthetic clips (16 kHz, 0.6-1.2 s) in 3 shards of 8, under ``root/shards``."""
    from data_prep import make_shards, synth

    root = Path(root)
    synth.main(["--out", str(root / "corpus"), "--num-clips", "24", "--min-seconds", "0.6", "--max-seconds", "1.2"])
    make_shards.main(["--manifest", str(root / "corpus" / "metadata.jsonl"), "--out", str(root / "shards"),
                      "--samples-per-shard", "8"])
    return root / "shards"


def make_token_shards(root: Path) -> Path:
    """32 random token clips (4 codebooks x 256, 40 frames) in 4 shards, under ``root/shards``."""
    return write_token_shards(Path(root) / "shards")
