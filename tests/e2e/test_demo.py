"""`make demo`'s script end to end, at reduced size: corpus -> shards -> codec -> tokens -> LM -> clips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from aurora.data.manifest import read_manifest
from tests.helpers.runs import REPO, read_metrics


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "AURORA_DEMO_QUICK": "1", "AURORA_DEMO_DIR": str(out),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "tools/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "generated clips:" in result.stdout

    tokens = read_manifest(out / "tokens")
    audio = read_manifest(out / "shards")
    assert tokens["kind"] == "tokens" and tokens["num_samples"] == audio["num_samples"]
    assert (out / "tokens" / tokens["codec"] / "model.safetensors").is_file()
    for run in ("codec", "lm"):
        metrics = read_metrics(out / run)
        assert metrics[-1]["step"] == 8  # quick mode's steps (tools/demo.sh)
        assert (out / run / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    samples = [json.loads(line) for line in (out / "lm" / "samples" / "samples.jsonl").read_text().splitlines()]
    assert [s["index"] for s in samples] == [0, 1, 2, 3]  # in batches of 2: rank 0 samples 0-1, rank 1 2-3
    for sample in samples:
        info = sf.info(out / "lm" / "samples" / sample["file"])
        assert info.samplerate == 16000 and abs(info.duration - 2.0) < 0.05
