"""Chaos test: SIGKILL training workers mid-run and check that the job recovers to the very
weights an uninterrupted run ends with.

    python -m tools.chaos [--out DIR] [--nproc 2] [--steps 40] [--kills 3]
                          [--seed 0] [--step-delay 0.25] [--shards DIR] [-- extra overrides]

Two runs of the tiny LM (configs/lm/tiny.yaml, shrunk further as in tests/dist/test_resume.py) go
through launch/torchrun.sh, the fault-tolerant wrapper a real job uses:

1. OUT/clean: the reference, ``MAX_RESTARTS=0``, no faults.
2. OUT/chaos: the same job with ``MAX_RESTARTS=kills+1`` and ``AURORA_FAULT_STEP_DELAY_S`` (so
   kills land mid-run). ``--kills`` times, once the job has logged a step since its last
   recovery and has a complete checkpoint, this tool waits a random time (seeded by
   ``--seed``: 0.5-1.5 times the time of the remaining steps divided by the remaining faults
   + 1, so the faults spread over the run), SIGKILLs one random worker (a child of the
   torchrun agent, found through /proc), and waits for torchrun to restart the group and
   aurora to print ``resumed from <ckpt> at step N``. The wrapper's stdout and stderr go to
   OUT/chaos.log.

Finally the latest checkpoint of each run is converted with DCP's ``dcp_to_torch_save`` and
every tensor under its ``"model"`` key is compared bit for bit (``torch.equal``), so the check
works for any task. Token shards are made in OUT/shards (``data_prep.synth_tokens``) unless
``--shards`` is given: nothing is downloaded. Extra ``key=value`` overrides after ``--`` go to
both runs (e.g. ``-- engine.name=ddp``).

Reading the table (also written to OUT/chaos.md), one row per fault:

- ``at (s)``: seconds since the chaos job started when the worker was killed;
- ``rank`` / ``pid``: the killed worker (its RANK from /proc/PID/environ);
- ``last logged``: the last step in metrics.jsonl before the kill;
- ``resumed at``: the step of the checkpoint the restarted job resumed from;
- ``steps lost``: last logged - resumed at, the work done again (below ``checkpoint_every``
  unless the kill hit while a checkpoint was being written);
- ``recovery (s)``: from the kill to the first metrics line the restarted job logged (the
  torchrun restart, process start-up, checkpoint load and one step); ``-`` when the job
  resumed at its last step and had nothing left to log.

Exit status: 0 when every planned fault was injected and recovered from, the job exited 0 at
its last step, and its final weights equal the clean run's; 1 otherwise.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from aurora.runs import resolve_checkpoint
from aurora.train.faults import SWITCH as FAULTS
from data_prep.synth_tokens import write_token_shards

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/lm/tiny.yaml"
SMALL = ["model.backbone.num_hidden_layers=2", "model.backbone.hidden_size=64",
         "model.backbone.intermediate_size=128", "data.context_frames=24", "data.batch_size=4",
         "data.num_workers=1", "optim.decay_steps=8", "optim.warmup_steps=2", "trainer.log_every=1",
         "trainer.progress_bar=false", "generation.num_samples=0"]
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")
POLL_S = 0.1


def log(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


# -- processes, through /proc -------------------------------------------------------------------
def parent_pids() -> dict[int, int]:
    """pid -> ppid of every process visible in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        parents[int(entry.name)] = int(fields[1])
    return parents


def children(pid: int, parents: dict[int, int]) -> list[int]:
    return sorted(child for child, parent in parents.items() if parent == pid)


def descendants(pid: int) -> list[int]:
    parents = parent_pids()
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop(), parents)
        found += kids
        todo += kids
    return found


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports (all held open until every one is chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


# -- one job under launch/torchrun.sh -------------------------------------------------------------
class Job:
    """launch/torchrun.sh running one training run, its output going to ``log_path``."""

    def __init__(self, run_dir: Path, log_path: Path, overrides: list[str], env: dict[str, str], timeout: float):
        self.run_dir = run_dir
        self.log_path = log_path
        with log_path.open("wb") as sink:
            self.process = subprocess.Popen(
                ["bash", "launch/torchrun.sh", "train", CONFIG, f"run.dir={run_dir}", *overrides],
                cwd=REPO, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        self.deadline = self.started + timeout

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def running(self) -> bool:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"{self.run_dir.name} job still running after its timeout")
        return self.process.poll() is None

    def workers(self) -> dict[int, str]:
        """pid -> rank of each worker: the children of the torchrun agent (the wrapper's child)."""
        parents = parent_pids()
        found = {}
        for agent in children(self.process.pid, parents):
            for pid in children(agent, parents):
                env = environ(pid)
                if "LOCAL_RANK" in env:
                    found[pid] = env.get("RANK", env["LOCAL_RANK"])
        return found

    def metrics_lines(self) -> list[str]:
        path = self.run_dir / "metrics.jsonl"
        return path.read_text().splitlines() if path.is_file() else []

    def last_metrics(self) -> dict:
        lines = [line for line in self.metrics_lines() if line.endswith("}")]  # skip a half-written one
        return json.loads(lines[-1]) if lines else {}

    def last_step(self) -> int:
        return self.last_metrics().get("step", 0)

    def has_checkpoint(self) -> bool:
        try:
            resolve_checkpoint(self.run_dir)
        except FileNotFoundError:
            return False
        return True

    def wait(self) -> int:
        while self.running():
            time.sleep(POLL_S)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the wrapper and everything under it (torchrun's workers run in their own sessions)."""
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


class LogTail:
    """Reads what a job has written to its log since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.pending = ""

    def new_lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.pending = (self.pending + data.decode(errors="replace")).split("\n")
        return lines


# -- the faults -----------------------------------------------------------------------------------
@dataclass
class Fault:
    number: int
    at_s: float
    rank: str
    pid: int
    last_step: int
    resumed_step: int | None = None
    recovery_s: float | None = None

    @property
    def steps_lost(self) -> int | None:
        return None if self.resumed_step is None else self.last_step - self.resumed_step


def wait_until(job: Job, ready) -> bool:
    """Poll until ``ready()``; False if the job exited first."""
    while not ready():
        if not job.running():
            return ready()
        time.sleep(POLL_S)
    return True


def inject(job: Job, number: int, rng: random.Random, args: argparse.Namespace) -> Fault | None:
    """Kill one random worker at a random time; None if the job ended before that."""
    if not wait_until(job, job.has_checkpoint):
        return None
    # Spread the remaining faults over the remaining steps: about one gap of steps per fault.
    last = job.last_metrics()
    step_s = last.get("step_time_s", 0.0) + args.step_delay
    gap_steps = (args.steps - last.get("step", 0)) / (args.kills - number + 2)
    time.sleep(rng.uniform(0.5, 1.5) * gap_steps * step_s)
    workers = job.workers()
    if not workers or not job.running():
        return None
    pid = rng.choice(sorted(workers))
    last_step = job.last_step()
    os.kill(pid, signal.SIGKILL)
    fault = Fault(number, job.elapsed(), workers[pid], pid, last_step)
    log(f"fault {number}: killed rank {fault.rank} (pid {pid}) at {fault.at_s:.1f} s, last logged step {last_step}")
    return fault


def await_recovery(job: Job, fault: Fault, tail: LogTail, lines_before: set[str]) -> None:
    """Fill in the step the restarted job resumed at and the seconds until it logged a step."""
    killed_at = time.monotonic()

    def resumed() -> bool:
        for line in tail.new_lines():
            if match := RESUMED.search(line):
                fault.resumed_step = int(match.group(2))
        return fault.resumed_step is not None

    def logged_new_step() -> bool:  # a line the dead attempt did not write (step_time_s differs)
        return any(line not in lines_before for line in job.metrics_lines())

    if not wait_until(job, resumed):
        log(f"fault {fault.number}: the job exited without resuming")
        return
    if wait_until(job, logged_new_step):
        fault.recovery_s = time.monotonic() - killed_at
    log(f"fault {fault.number}: resumed at step {fault.resumed_step}"
        + (f", logging again {fault.recovery_s:.1f} s after the kill" if fault.recovery_s is not None else ""))


def run_chaos(job: Job, args: argparse.Namespace, faults: list[Fault]) -> None:
    """Inject the faults one after the other, each once the job recovered from the one before."""
    rng = random.Random(args.seed)
    tail = LogTail(job.log_path)
    for number in range(1, args.kills + 1):
        lines_before = set(job.metrics_lines())
        tail.new_lines()  # only what the job prints after this kill counts as its recovery
        fault = inject(job, number, rng, args)
        if fault is None:
            log(f"the job ended before fault {number}")
            return
        faults.append(fault)
        await_recovery(job, fault, tail, lines_before)
        if fault.resumed_step is None:
            return


# -- the final weights ----------------------------------------------------------------------------
def model_tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested state dict, by dotted name."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        found = {}
        for key, value in state.items():
            found.update(model_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {}


def final_weights(run_dir: Path, scratch: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The latest checkpoint of a run and the tensors under its "model" key."""
    checkpoint = resolve_checkpoint(run_dir)
    converted = scratch / f"{run_dir.name}.pt"
    dcp_to_torch_save(checkpoint, converted)
    return checkpoint, model_tensors(torch.load(converted, weights_only=False)["model"])


@dataclass
class WeightsCheck:
    clean: str
    chaos: str
    compared: int
    differ: list[str]

    @property
    def equal(self) -> bool:
        return self.compared > 0 and not self.differ


def compare_weights(clean_dir: Path, chaos_dir: Path) -> WeightsCheck:
    with tempfile.TemporaryDirectory() as scratch:
        clean_ckpt, clean = final_weights(clean_dir, Path(scratch))
        chaos_ckpt, chaos = final_weights(chaos_dir, Path(scratch))
    names = sorted(clean.keys() | chaos.keys())
    differ = [n for n in names if n not in clean or n not in chaos or not torch.equal(clean[n], chaos[n])]
    return WeightsCheck(clean_ckpt.name, chaos_ckpt.name, len(names), differ)


# -- the report -----------------------------------------------------------------------------------
def cell(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def fault_table(faults: list[Fault]) -> list[str]:
    rows = ["| fault | at (s) | rank | pid | last logged | resumed at | steps lost | recovery (s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in faults:
        rows.append(f"| {f.number} | {f.at_s:.1f} | {f.rank} | {f.pid} | {f.last_step} | {cell(f.resumed_step)} "
                    f"| {cell(f.steps_lost)} | {cell(f.recovery_s, '{:.1f}')} |")
    return rows


def summary(faults: list[Fault], args: argparse.Namespace, rc: int | None, final_step: int,
            weights: WeightsCheck | None) -> tuple[list[str], bool]:
    recovered = sum(f.resumed_step is not None for f in faults)
    finished = rc == 0 and final_step == args.steps
    if weights is None:
        weights_line = "no (not compared: the job did not finish)"
    else:
        weights_line = (f"{'yes' if weights.equal else 'no'} ({weights.compared} tensors compared, "
                        f"{len(weights.differ)} differ; clean {weights.clean} vs chaos {weights.chaos})")
        if weights.differ:
            weights_line += f"; first differing: {', '.join(weights.differ[:5])}"
    lines = [f"- faults injected: {len(faults)} of {args.kills}",
             f"- recoveries seen: {recovered}",
             f"- job exit code: {cell(rc)}" + (" (timed out, killed)" if rc is None else ""),
             f"- final step: {final_step} of {args.steps}",
             f"- final weights equal to the clean run: {weights_line}"]
    ok = len(faults) == args.kills == recovered and finished and weights is not None and weights.equal
    return lines, ok


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where the runs go (default: a new temporary directory; a fixed "
                        "path in /tmp could be planted by another user with checkpoints this tool loads)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.25, help="seconds each step sleeps in the chaos run")
    parser.add_argument("--shards", type=Path, help="token shard directory (default: make OUT/shards)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds each job may take")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for both runs (after --)")
    args = parser.parse_args(argv)
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="aurora-chaos-"))).resolve()  # the jobs run in the repo root
    args.shards = args.shards and args.shards.resolve()
    return args


def start_job(name: str, args: argparse.Namespace, shards: Path, port: int, env: dict[str, str]) -> Job:
    run_dir = args.out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"data.shards={shards}", *SMALL, f"trainer.max_steps={args.steps}",
                 f"trainer.checkpoint_every={args.checkpoint_every}", *args.overrides]
    env = {"NPROC": str(args.nproc), "MASTER_PORT": str(port), "RDZV_ID": f"chaos-{name}",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    log(f"{name} run: {run_dir} (log {args.out / f'{name}.log'})")
    return Job(run_dir, args.out / f"{name}.log", overrides, env, args.timeout)


def supervise(job: Job, during=lambda: None) -> int | None:
    """Run ``during()`` while the job runs, then wait for it: its exit code, or None when it ran
    past its timeout (then it is killed)."""
    try:
        during()
        return job.wait()
    except TimeoutError as e:
        log(str(e))
        job.kill()
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    shards = args.shards or write_token_shards(args.out / "shards")
    clean_port, chaos_port = free_ports(2)

    clean = start_job("clean", args, shards, clean_port, {"MAX_RESTARTS": "0"})
    clean_rc = supervise(clean)
    if clean_rc != 0:
        log(f"the clean run failed (exit {clean_rc}); see {clean.log_path}")
        return 1

    chaos = start_job("chaos", args, shards, chaos_port,
                      {"MAX_RESTARTS": str(args.kills + 1), FAULTS: "1",
                       "AURORA_FAULT_STEP_DELAY_S": str(args.step_delay)})
    faults: list[Fault] = []
    rc = supervise(chaos, lambda: run_chaos(chaos, args, faults))
    final_step = chaos.last_step()
    weights = compare_weights(clean.run_dir, chaos.run_dir) if rc == 0 else None

    lines, ok = summary(faults, args, rc, final_step, weights)
    report = "\n".join([*fault_table(faults), "", *lines]) + "\n"
    print(report, end="")
    (args.out / "chaos.md").write_text(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
