"""The GPU machine's run, rehearsed on the CPU: ``tools/gpu_check.sh --dry-run`` and the wheelhouse
that ``tools/gpu_wheels.sh`` builds for its Python 3.12."""

import os
import subprocess
import sys

from tests.helpers.runs import REPO

STEPS = ["0 environment", "1 data", "2 LM FSDP bf16 async ckpt + resume", "2b deterministic resume",
         "3 codec GAN bf16 DDP + FSDP",
         "4 DeepSpeed ZeRO-2/3 bf16 dtypes", "5 LM FSDP bf16 compile", "6 lm_throughput", "7 codec_step",
         "8 checkpoint_stall", "9 profile"]


def test_every_step_of_the_gpu_check_runs_at_toy_sizes(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "TMPDIR": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "tools/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:]
    rows = [line.split(" | ") for line in (out / "summary.md").read_text().splitlines()[2:]]
    assert [row[0].removeprefix("| ") for row in rows] == STEPS
    assert all(row[1] == "ok" for row in rows), rows
    results = {row[0].removeprefix("| "): row[3] for row in rows}
    assert "ZeRO-2:  bfloat16 x" in results[STEPS[5]] and "ZeRO-3:  bfloat16 x" in results[STEPS[5]]
    assert "float32" not in results[STEPS[5]]  # every Linear computed in bf16 under DeepSpeed
    assert "steps 3-4 after the resume: bit-identical" in results[STEPS[3]]
    assert "step=6 " in results[STEPS[2]]  # resumed from step 4 and trained on to the second run's end
    log = (out / "gpu_check.log").read_text()
    assert "resumed from" in log and "ratio aurora/transformers" in log
    assert "torch profiler: step=5 " in results[STEPS[10]] and "| forward |" in log  # profile_report's table
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "summary.md"]  # what comes back
    assert not list(tmp_path.glob("gpu_check.*"))  # its work folder is removed


def test_the_wheelhouse_installs_offline_on_python_3_12(tmp_path):
    """Built from PyPI (downloads and DeepSpeed's sdist), then checked by pip with no index for
    CPython 3.12 on manylinux x86-64 (``tools/wheelhouse.py``)."""
    wheels = tmp_path / "whl"
    result = subprocess.run(["bash", "tools/gpu_wheels.sh", str(wheels)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "install offline for --python-version 3.12: ok" in result.stdout
    names = sorted(p.name.split("-")[0].lower() for p in wheels.glob("*.whl"))
    assert {"deepspeed", "omegaconf", "webdataset", "soundfile", "pydantic_core"} <= set(names)
    assert not {"wandb", "pesq", "pystoi", "torch", "nvidia_dali_cuda130"} & set(names)
    assert any(p.name.startswith("pydantic_core-") and "cp312" in p.name for p in wheels.glob("*.whl"))
