"""Where a run's step time went: ``python -m tools.profile_report RUN``.

Prints, as markdown tables:

- the step-time breakdown of metrics.jsonl (``time/*``, always recorded): the median and p90 of
  each phase over the logged steps, and its share of their total time;
- the straggler view of RUN/step_times.jsonl (every rank's step time at each logged step):
  each rank's median and p90, and at how many steps it was the slowest;
- for each torch profiler trace in RUN/profile (``profile.mode=torch``), or those given with
  ``--trace``: the operators with the most self time, and the communication exposed outside
  compute (``tools.kineto``).

and writes a PNG (RUN/profile_report.png, or ``--png``): a stacked bar per logged step by phase
above, every rank's step time per step below.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from aurora.perf.step_clock import PHASES, metric
from aurora.train.metrics import STEP_TIMES
from tools.kineto import summarize

TRACES = "profile/*.json.gz"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def breakdown(records: list[dict]) -> tuple[list[int], dict[str, np.ndarray]]:
    """The logged steps that hold a breakdown, and each phase's seconds at them (``step`` too)."""
    timed = [r for r in records if metric(PHASES[0]) in r]
    if not timed:
        raise SystemExit("profile_report: metrics.jsonl holds no time/* breakdown (a run of an aurora older than "
                         "the breakdown?): nothing to report")
    series = {phase: np.array([r[metric(phase)] for r in timed]) for phase in PHASES}
    series["step"] = np.array([r["step_time_s"] for r in timed])
    return [r["step"] for r in timed], series


def breakdown_table(series: dict[str, np.ndarray]) -> str:
    total = series["step"].sum()
    rows = [[name, f"{np.median(s):.4f}", f"{np.percentile(s, 90):.4f}", f"{100 * s.sum() / total:.1f}%"]
            for name, s in series.items()]
    return _table(["phase", "median s", "p90 s", "share"], rows)


def straggler_table(rank_times: np.ndarray) -> str:
    """``rank_times``: [logged steps, ranks]."""
    slowest = np.bincount(rank_times.argmax(axis=1), minlength=rank_times.shape[1])
    rows = [[str(rank), f"{np.median(t):.4f}", f"{np.percentile(t, 90):.4f}", str(slowest[rank])]
            for rank, t in enumerate(rank_times.T)]
    return _table(["rank", "median step s", "p90 step s", "slowest at steps"], rows)


def trace_tables(path: Path, top: int) -> str:
    summary = summarize(path, top)
    rows = [[kind, f"`{name}`", str(calls), f"{1e3 * seconds:.2f}",
             f"{100 * seconds / summary.step_s:.1f}%" if summary.step_s else "-"]
            for kind, name, calls, seconds in summary.top]
    exposed = 100 * summary.exposed_comm_s / summary.comm_s if summary.comm_s else 0.0
    return "\n".join([
        f"trace {path.name}: {summary.steps} step(s), {summary.step_s:.3f} s",
        _table(["kind", "operator", "calls", "self ms", "of steps"], rows), "",
        f"communication: {1e3 * summary.comm_s:.2f} ms, exposed outside compute {1e3 * summary.exposed_comm_s:.2f} ms "
        f"({exposed:.0f}%)"])


def plot(steps: list[int], series: dict[str, np.ndarray], time_steps: list[int], rank_times: np.ndarray | None,
         out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 if rank_times is None else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.5 * rows), squeeze=False, layout="constrained")
    bars = axes[0][0]
    bottom = np.zeros(len(steps))
    for phase in PHASES:
        bars.bar(steps, series[phase], bottom=bottom, label=phase, width=0.8)
        bottom += series[phase]
    bars.set_ylabel("seconds")
    bars.set_title("step time by phase")
    bars.legend(loc="upper right", fontsize="small", ncols=len(PHASES))
    if rank_times is not None:
        ranks = axes[1][0]
        for rank, t in enumerate(rank_times.T):
            ranks.plot(time_steps, t, marker=".", linewidth=1, label=f"rank {rank}")
        ranks.set_xlabel("step")
        ranks.set_ylabel("step time (s)")
        ranks.set_title("step time per rank (stragglers)")
        if rank_times.shape[1] <= 16:
            ranks.legend(loc="upper right", fontsize="small")
    else:
        bars.set_xlabel("step")
    fig.savefig(out, dpi=100)
    plt.close(fig)


def report(run_dir: Path, png: Path, traces: list[Path], top: int) -> str:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"profile_report: {metrics} does not exist: give the run directory of an aurora train run")
    steps, series = breakdown(_read_jsonl(metrics))
    parts = [f"run {run_dir}: {len(steps)} logged step(s)", "", breakdown_table(series)]
    rank_times, time_steps = None, []
    if (run_dir / STEP_TIMES).is_file():
        records = _read_jsonl(run_dir / STEP_TIMES)
        time_steps = [r["step"] for r in records]
        rank_times = np.array([r["step_time_s"] for r in records])
        parts += ["", f"step time of each of {rank_times.shape[1]} rank(s):", straggler_table(rank_times)]
    for trace in traces:
        parts += ["", trace_tables(trace, top)]
    plot(steps, series, time_steps, rank_times, png)
    parts += ["", f"plot: {png}"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.profile_report", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run directory (RUN of aurora train run.dir=RUN)")
    parser.add_argument("--png", type=Path, help="where to write the plot (default RUN/profile_report.png)")
    parser.add_argument("--trace", type=Path, action="append",
                        help=f"a torch profiler trace to summarise (repeatable; default RUN/{TRACES})")
    parser.add_argument("--top", type=int, default=10, help="operators listed per trace")
    args = parser.parse_args(argv)
    traces = args.trace if args.trace is not None else sorted(args.run.glob(TRACES))
    missing = [str(t) for t in traces if not t.is_file()]
    if missing:
        raise SystemExit(f"profile_report: no trace file {missing[0]}")
    print(report(args.run, args.png or args.run / "profile_report.png", traces, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
