"""make_pairs and ref_logprobs killed mid-shard (SIGKILL) resume by the same command to the bytes
of an uninterrupted run."""

from data_prep import make_pairs, ref_logprobs
from tests.helpers.runs import run_cmd
from tests.helpers.tokens import tar_bytes

SETTINGS = ["--seconds", "0.3", "--batch-size", "4", "--mode", "ranked", "--reward", "mel_distance",
            "--num-candidates", "2"]


def test_killed_pair_and_reference_jobs_resume_to_the_same_bytes(tmp_path, lm_run, tokens, capsys):
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def pairs_args(out):
        return ["--lm", str(lm_run), "--trust-checkpoint", "--prompts", str(tokens), "--out", str(out), *SETTINGS]

    def ref_args(out):
        return ["--lm", str(lm_run), "--trust-checkpoint", "--pairs", str(out)]

    make_pairs.main(pairs_args(straight))
    ref_logprobs.main(ref_args(straight))

    died = run_cmd(["-m", "data_prep.make_pairs", *pairs_args(killed)], env={make_pairs.FAULT_KILL_ENV: "1"},
                   check=False)
    assert died.returncode == -9, died.stderr[-3000:]
    assert (killed / "shard-000001.tar.tmp").stat().st_size > 0 and not (killed / "shard-000001.tar").exists()
    assert not (killed / "manifest.json").exists()
    make_pairs.main(pairs_args(killed))
    assert "(1 shards done before)" in capsys.readouterr().out
    assert not list(killed.glob("*.tmp"))

    died = run_cmd(["-m", "data_prep.ref_logprobs", *ref_args(killed)], env={ref_logprobs.FAULT_KILL_ENV: "2"},
                   check=False)
    assert died.returncode == -9, died.stderr[-3000:]
    assert (killed / "shard-000002.tar.tmp").is_file() and "reference" not in (killed / "manifest.json").read_text()
    ref_logprobs.main(ref_args(killed))
    assert "(2 done before)" in capsys.readouterr().out
    assert tar_bytes(killed) == tar_bytes(straight)
    assert not list(killed.glob("*.tmp"))
