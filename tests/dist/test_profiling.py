"""One profiled run of the small LM on the session's 2 ranks, read several ways: the step-time
breakdown (``time/*``) and its spread over ranks, the torch profiler's window on rank 0 only,
whose slow trace write must not hold rank 1 back, the ranges of a whole step, and
``tools.profile_report`` on what the run wrote."""

import gzip
import json
import re

import pytest

from aurora.perf.spans import set_ranges
from aurora.perf.step_clock import PHASES, metric
from aurora.train.faults import SWITCH as FAULTS
from aurora.train.metrics import STEP_TIMES
from tests.helpers.ranges import RangeRecorder
from tests.helpers.runs import cli, lm_train_args, read_metrics

STEPS = 6
TRACE_DELAY_S = 2.0
"""How much longer rank 0's trace takes to write (``AURORA_FAULT_TRACE_DELAY_S``): far more than
a step of the small LM (~0.1 s), so a rank made to wait for the write shows it in its step time."""
WINDOW = (2, 3)


def fit_recording_ranges(*args: str) -> tuple[int, list[tuple[int, str]], bool]:
    """``aurora train ARGS`` with a range recorder in place of NVTX; the exit code, the ranges
    opened and whether all were closed. (A profiling rank's window replaces the recorder.)"""
    recorder = RangeRecorder()
    set_ranges(recorder)
    try:
        code = cli(*args)
    finally:
        set_ranges(None)
    return code, recorder.opened, recorder.balanced


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory, token_shards, pool2):
    """6 steps, a checkpoint every 3, the torch profiler over steps 2-3 on rank 0 only, whose trace
    write is slowed by ``TRACE_DELAY_S``; each rank's (exit code, ranges, balanced)."""
    run_dir = tmp_path_factory.mktemp("profiled") / "run"
    args = lm_train_args(run_dir, token_shards, STEPS, "trainer.checkpoint_every=3", "profile.mode=torch",
                         "profile.ranks=[0]", f"profile.start_step={WINDOW[0]}", f"profile.end_step={WINDOW[1]}")
    results = pool2.run(fit_recording_ranges, *args,
                        env={FAULTS: "1", "AURORA_FAULT_TRACE_DELAY_S": str(TRACE_DELAY_S)})
    assert [r.value[0] for r in results] == [0, 0], [r.output[-3000:] for r in results]
    return run_dir, [r.value for r in results]


def test_the_breakdown_sums_to_the_step_time_and_shows_the_slowest_rank(profiled_run):
    run_dir, _ = profiled_run
    metrics = read_metrics(run_dir)
    rank_times = [json.loads(line) for line in (run_dir / STEP_TIMES).read_text().splitlines()]
    assert [m["step"] for m in metrics] == [r["step"] for r in rank_times] == list(range(1, STEPS + 1))
    for m, ranks in zip(metrics, rank_times):
        phases = [m[metric(phase)] for phase in PHASES]
        assert min(phases) >= 0 and sum(phases) == pytest.approx(m["step_time_s"], rel=0.05), m
        times = ranks["step_time_s"]
        assert len(times) == 2 and times[0] == m["step_time_s"]
        assert (m["time/step_max_s"], m["time/step_min_s"]) == (max(times), min(times))
        assert times[m["time/slowest_rank"]] == max(times)
    assert all(m["time/forward_s"] > 0 and m["time/backward_s"] > 0 and m["time/optimizer_s"] > 0 for m in metrics)
    assert [m["time/checkpoint_s"] > 0 for m in metrics] == [step % 3 == 0 for step in range(1, STEPS + 1)]


def test_the_window_on_rank_0_writes_its_trace_with_the_ranges_and_holds_no_rank_back(profiled_run):
    """Rank 0's trace is written in the background: rank 1's steps after the window take a
    fraction of the trace's write time (an inline write would hold every rank in the next
    step's first collective); rank 1 writes no trace."""
    run_dir, _ = profiled_run
    assert sorted(p.name for p in (run_dir / "profile").iterdir()) == ["rank0_steps2-3.json.gz"]
    events = json.loads(gzip.decompress((run_dir / "profile" / "rank0_steps2-3.json.gz").read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert {f"aurora/{name}" for name in ("step", "data", "comm/units_all_reduce", "model/forward", "model/backward",
                                          "model/all_reduce", "model/optimizer", "checkpoint/save")} <= names
    assert sum(e.get("name") == "aurora/step" for e in events) == 2  # steps 2 and 3
    rank_times = [json.loads(line)["step_time_s"] for line in (run_dir / STEP_TIMES).read_text().splitlines()]
    after_window = [times[1] for times in rank_times[WINDOW[1]:]]
    assert max(after_window) < TRACE_DELAY_S / 2, after_window


def test_ranges_of_whole_steps_nest_under_the_step(profiled_run):
    """On rank 1 (not profiling, so its recorder stays in place): one outermost range per step,
    everything else inside one, the checkpoint steps' save and wait among them, all closed."""
    _, [_, (_, opened, balanced)] = profiled_run
    assert balanced
    assert [name for depth, name in opened if depth == 0] == ["aurora/step"] * STEPS
    inner = [name for depth, name in opened if depth > 0]
    assert inner.count("aurora/data") == inner.count("aurora/model/optimizer") == STEPS
    assert inner.count("aurora/checkpoint/save") == 2 and "aurora/checkpoint/wait" in inner


def test_profile_report_prints_the_tables_and_writes_the_plot(profiled_run, tmp_path, capsys):
    """From the run's files: the breakdown (each phase's median and p90), each rank's step time,
    the trace's top operators and exposed communication, and a PNG of two plots."""
    from matplotlib import pyplot as plt

    from tools import profile_report

    run_dir, _ = profiled_run
    png = tmp_path / "report.png"
    assert profile_report.main([str(run_dir), "--png", str(png), "--top", "5"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ") for line in out.splitlines()
            if line.startswith("| ")}
    step_times = sorted(m["step_time_s"] for m in read_metrics(run_dir))
    assert float(rows["step"][1]) == pytest.approx((step_times[2] + step_times[3]) / 2, abs=1e-4)  # the median of 6
    assert all(phase in rows for phase in PHASES) and rows["step"][3].strip() == "100.0%"
    assert sum(int(rows[str(rank)][3]) for rank in (0, 1)) == STEPS  # one slowest rank per step
    assert "trace rank0_steps2-3.json.gz: 2 step(s)" in out
    assert sum(line.startswith("| cpu_op | `") for line in out.splitlines()) == 5
    comm, exposed = map(float, re.search(r"communication: ([\d.]+) ms, exposed outside compute ([\d.]+) ms", out).groups())
    assert 0 < exposed <= comm
    image = plt.imread(png)
    assert image.shape[0] > 500 and image.shape[1] == 1000  # two plots stacked, 10 inches at 100 dpi
