"""tools/demo.sh deletes its output directory only if the demo made it (a marker file). The demo's
first command is a stand-in python that fails at once: only the start of the script runs."""

import os
import subprocess

from tests.helpers.runs import REPO


def _demo(tmp_path, out) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text("#!/usr/bin/env bash\nexit 9\n")
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "AURORA_DEMO_DIR": str(out), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "tools/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)


def test_a_directory_the_demo_did_not_make_is_never_deleted(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    result = _demo(tmp_path, out)
    assert result.returncode == 2
    assert f"{out} exists and was not made by the demo" in result.stderr
    assert (out / "thesis.tex").read_text() == "years of work"


def test_the_demo_starts_afresh_in_its_own_directory(tmp_path):
    out = tmp_path / "demo"
    assert _demo(tmp_path, out).returncode == 9  # ran up to its first python command
    assert (out / ".aurora-demo").is_file()
    (out / "corpus").mkdir()  # what a run left
    assert _demo(tmp_path, out).returncode == 9
    assert (out / ".aurora-demo").is_file() and not (out / "corpus").exists()
