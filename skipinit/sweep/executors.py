"""Executors that train a sweep's runs: local sequential, local parallel (one run per GPU), SLURM.

Every run is trained by `scripts/train.py` in a subprocess, so a crash (or an out-of-memory kill)
costs one run, not the sweep, and each worker can pin its own GPU with CUDA_VISIBLE_DEVICES. All
executors go through `run_one`, which makes re-launching safe (PAPER.md section 4: a diverged run
is a result, never re-run):
  completed, diverged        skipped
  failed, interrupted        re-run; the trainer resumes from the run's last checkpoint
  locked by another worker   skipped by this one (two workers never train the same run)
"""

import collections
import contextlib
import datetime
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

from skipinit import rundir, values
from skipinit.rundir import Status
from skipinit.sweep import lock as run_lock
from skipinit.sweep.spec import Run, SweepError

ATTEMPTS = "attempts.jsonl"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "scripts", "train.py")


def train_command(sweep_dir: str, run: Run, config: str, config_arg: str,
                  train_script: str | None = None) -> list[str]:
  """The `scripts/train.py` command line of one run (DESIGN.md "Train"): an absolute workdir, run
  in the launcher's cwd, so that relative paths in the sweep argument (data.path) mean what they
  meant where the sweep was launched."""
  script = train_script or TRAIN_SCRIPT
  if not os.path.isfile(script):
    raise SweepError(f"training script {script!r} not found: install the repository in editable "
                     "mode (pip install -e .) and run from it")
  config_flag = f"--config={config}:{config_arg}" if config_arg else f"--config={config}"
  cmd = [sys.executable, script, config_flag,
         f"--workdir={os.path.abspath(os.path.join(sweep_dir, run.name))}"]
  cmd += [f"--config.{k}={values.fmt(v)}" for k, v in run.overrides.items()]
  return cmd


def classify(sweep_dir: str, runs: Sequence[Run]) -> dict[str, list[Run]]:
  """Runs by what a launch would do with them: completed, diverged, busy, failed, interrupted, new."""
  out = {k: [] for k in ("completed", "diverged", "busy", "failed", "interrupted", "new")}
  for run in runs:
    run_dir = os.path.join(sweep_dir, run.name)
    state = rundir.run_state(run_dir)
    if state in rundir.FINISHED:
      out[state].append(run)
    elif run_lock.is_locked(run_dir):
      out["busy"].append(run)
    elif state == Status.FAILED:
      out["failed"].append(run)
    elif state == Status.RUNNING or os.path.isdir(os.path.join(run_dir, rundir.CHECKPOINTS)):
      out["interrupted"].append(run)
    else:
      out["new"].append(run)
  return out


def _record_attempt(sweep_dir: str, entry: dict) -> None:
  # One short line per write with O_APPEND: concurrent workers do not interleave within a line.
  with open(os.path.join(sweep_dir, ATTEMPTS), "a") as f:
    f.write(json.dumps(entry) + "\n")


class _Active:
  """Training processes started by this process, so an interrupt can stop them all."""

  def __init__(self):
    self.procs, self.lock = set(), threading.Lock()
    self.stopped = set()  # the ones terminate_all stopped: interrupted, not failed

  def add(self, p):
    with self.lock:
      self.procs.add(p)

  def remove(self, p):
    with self.lock:
      self.procs.discard(p)

  def terminate_all(self):
    with self.lock:
      procs = list(self.procs)
      self.stopped.update(procs)
    _stop(*procs)

  def was_stopped(self, p) -> bool:
    with self.lock:
      return p in self.stopped


_ACTIVE = _Active()
# How long a trainer gets, after SIGTERM, to reach its next boundary and checkpoint (SLURM's
# default grace period before SIGKILL is 30 s).
STOP_GRACE_S = 30.0


def _stop(*procs: subprocess.Popen) -> None:
  """SIGTERM to each trainer (they checkpoint at their next boundary and exit), then SIGKILL to
  any still running after the grace period: all signalled first, so they stop in parallel."""
  live = [p for p in procs if p.poll() is None]
  for p in live:
    p.terminate()
  deadline = time.time() + STOP_GRACE_S
  for p in live:
    try:
      p.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


class Terminated(KeyboardInterrupt):
  """SIGTERM reached the sweep process: its trainers were stopped (SIGTERM, SIGKILL after the grace)."""


@contextlib.contextmanager
def sigterm_stops_trainers():
  """Within this block SIGTERM (a scheduler, `kill PID`) raises `Terminated` in the main thread.

  The executors handle it as an interrupt: every trainer this process started gets SIGTERM and
  time to checkpoint, its attempt is recorded, and nothing is left running without its sweep
  (an orphaned trainer would also keep its run's lock, so a relaunch would skip the run as busy).
  """
  received = []

  def handle(signum, frame):
    if not received:  # a second SIGTERM must not cut the stopping short (and no SIG_IGN: the
      received.append(signum)  # trainers started meanwhile would inherit it)
      raise Terminated()

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def run_one(sweep_dir: str, run: Run, config: str, config_arg: str, env: dict | None = None,
            train_script: str | None = None, worker: str = "") -> str:
  """Trains one run unless it is finished or locked; returns its state afterwards ("refused" for a
  failed run that the trainer refused this time), or "busy"/"skipped".

  The state is re-read under the lock, so a run another worker finished a moment ago is skipped.
  """
  run_dir = os.path.join(sweep_dir, run.name)
  lock = run_lock.RunLock(run_dir)
  if not lock.acquire():
    return "busy"
  try:
    if rundir.run_state(run_dir) in rundir.FINISHED:
      return "skipped"
    cmd = train_command(sweep_dir, run, config, config_arg, train_script)
    start = time.time()
    with open(os.path.join(run_dir, rundir.LOG), "a") as log:
      log.write(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} "
                f"{socket.gethostname()} {worker}\n$ {' '.join(cmd)}\n")
      log.flush()
      attempt_start = log.tell()
      # pass_fds: the trainer inherits the lock, so it stays held while training even if this
      # worker dies; closing our copy later does not release the trainer's. SKIPINIT_SWEEP_PID:
      # the trainer stops (checkpointed) when this process dies, even by SIGKILL (train.py).
      env = dict(os.environ if env is None else env, SKIPINIT_SWEEP_PID=str(os.getpid()))
      # XLA's persistent compilation cache, shared by the sweep's trainers (a user's own setting
      # wins): a run resumed, or one that compiles the same program as an earlier run, reads its
      # executables instead of compiling them again.
      env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(sweep_dir),
                                                               ".jax_cache"))
      p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                           pass_fds=(lock.fd,))
      _ACTIVE.add(p)
      interrupted = None
      try:
        returncode = p.wait()
      except BaseException as e:  # SIGTERM or Ctrl-C of the sweep: stop the trainer first
        interrupted = e
        _stop(p)
        returncode = p.returncode
      finally:
        _ACTIVE.remove(p)
    state = rundir.run_state(run_dir)
    refused = False
    if (interrupted is not None or _ACTIVE.was_stopped(p)) and state not in rundir.FINISHED:
      state = "interrupted"
    elif returncode != 0 and state not in rundir.FINISHED:
      state = Status.FAILED  # e.g. killed before it could write status.json
      previous = rundir.read_status(run_dir)
      if returncode == 2 and (previous is None or previous.get("refused")):
        # The trainer refused its config or data and, by its contract, wrote nothing: say so
        # here, or every later listing and table would call the run new or missing.
        _write_refused_status(run_dir, attempt_start)
        refused = True
    _record_attempt(sweep_dir, {
        "run": run.name, "state": state, "returncode": returncode, "worker": worker,
        "host": socket.gethostname(), "start": round(start, 1),
        "seconds": round(time.time() - start, 1)})
    if interrupted is not None:
      raise interrupted
    return "refused" if refused else state
  finally:
    lock.release()


def _write_refused_status(run_dir: str, log_offset: int) -> None:
  """status.json of a run the trainer refused, with the error line of this attempt's log."""
  with open(os.path.join(run_dir, rundir.LOG)) as f:
    f.seek(log_offset)
    errors = [line.strip() for line in f if line.startswith("error:")]
  message = errors[-1] if errors else "error: the trainer refused its input (exit 2)"
  rundir.write_status(run_dir, Status.FAILED, refused=True, error=message)


def _describe(run: Run, state: str, sweep_dir: str) -> str:
  status = rundir.read_status(os.path.join(sweep_dir, run.name)) or {}
  if state == Status.COMPLETED and "test_acc" in status:
    return f"completed (test_acc {status['test_acc']:.4g})"
  if state == Status.DIVERGED:
    return f"diverged at step {status.get('diverged_step', '?')}"
  if state in (Status.FAILED, "refused") and status.get("refused"):
    return f"REFUSED: {status['error']}"
  if state == Status.FAILED:
    return f"FAILED: see {os.path.join(sweep_dir, run.name, rundir.LOG)}"
  return state


# refill(exclude, idle) -> the runs to start next (at most `idle`), recomputed from the run
# directories: an adaptive search (lr_search=ladder) decides its next runs from the ones that
# finished. `exclude`: the names this launch has in flight or has already tried, never proposed
# again by the same launch (a run that failed here waits for the next launch, as in a grid).
Refill = Callable[[frozenset, int], Sequence[Run]]


def _count_text(i: int, runs: Sequence[Run], refill) -> str:
  return f"[{i + 1}]" if refill is not None else f"[{i + 1}/{len(runs)}]"


def run_local(sweep_dir: str, runs: Sequence[Run], config: str, config_arg: str,
              train_script: str | None = None, log: Callable[[str], None] = print,
              refill: Refill | None = None) -> dict[str, int]:
  """Trains the runs one after another in this process's environment (all its devices); then, with
  `refill`, what it asks for next, until it asks for nothing."""
  outcomes = collections.Counter()
  todo, tried, i = list(runs), set(), 0
  while True:
    if not todo and refill is not None:
      todo = [r for r in refill(frozenset(tried), 1) if r.name not in tried]
    if not todo:
      return outcomes
    run = todo.pop(0)
    tried.add(run.name)
    n = _count_text(i, runs, refill)
    log(f"{n} {run.name}: training")
    state = run_one(sweep_dir, run, config, config_arg, train_script=train_script, worker="local")
    outcomes[state] += 1
    log(f"{n} {run.name}: {_describe(run, state, sweep_dir)}")
    i += 1


def detect_gpus() -> list[str]:
  """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [g.strip() for g in visible.split(",") if g.strip()]
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in out.splitlines() if line.strip()]


def has_gpu() -> bool:
  """Whether this machine has an NVIDIA GPU: nvidia-smi lists one, or a /dev/nvidia<N> exists
  (containers without nvidia-smi)."""
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
  except (OSError, subprocess.SubprocessError):
    out = ""
  return "GPU" in out or bool(glob.glob("/dev/nvidia[0-9]*"))


def check_gpus(gpus: Sequence[str]) -> None:
  if not gpus:
    raise SweepError("--executor=gpus found no GPUs (no CUDA_VISIBLE_DEVICES, no nvidia-smi): pass "
                     "--gpus=0,1,... or use --executor=local")


def run_gpus(sweep_dir: str, runs: Sequence[Run], config: str, config_arg: str, gpus: Sequence[str],
             train_script: str | None = None, log: Callable[[str], None] = print,
             cpu: bool = False, refill: Refill | None = None) -> dict[str, int]:
  """One worker per entry of `gpus`, each training one run at a time on its own GPU.

  `refill`: when the runs given are all started and a worker is free, it is asked (under the
  workers' lock, once per run that ended) for the next runs, at most as many as there are free
  workers; the executor returns when nothing is in flight and it asks for nothing.

  A GPU id listed twice ("0,0,1,1") runs two small runs on it at once; JAX then allocates memory on
  demand instead of grabbing most of the GPU per process. `cpu`: no GPU here; the workers train
  on the CPU (named "worker N", no CUDA_VISIBLE_DEVICES).
  """
  check_gpus(gpus)
  shared = len(set(gpus)) < len(gpus)
  todo = collections.deque(enumerate(runs))
  outcomes = collections.Counter()
  lock, stop, all_done = threading.Condition(), threading.Event(), threading.Event()
  errors, running = [], [len(gpus)]
  in_flight, tried, started, changed = set(), set(), [len(runs)], [True]

  def take():
    """The next (index, run) for a free worker, or None when the launch is done (or stopped)."""
    with lock:
      while not stop.is_set():
        if todo:
          i, run = todo.popleft()
          in_flight.add(run.name)
          tried.add(run.name)
          return i, run
        if refill is None:
          return None
        if changed[0]:  # something ended since the last ask: the search may want more now
          changed[0] = False
          try:
            more = refill(frozenset(tried | in_flight), len(gpus) - len(in_flight))
          except Exception as e:  # (a bad run directory): stop cleanly, report at the end
            errors.append(f"deciding the next runs: {e}")
            stop.set()
            lock.notify_all()
            return None
          for run in more:
            if run.name not in tried and run.name not in in_flight:
              todo.append((started[0], run))
              started[0] += 1
          if todo:
            lock.notify_all()
            continue
        if not in_flight:
          lock.notify_all()
          return None
        lock.wait(0.5)
      return None

  def worker(gpu: str, slot: int):
    try:
      work(gpu, slot)
    finally:
      with lock:
        running[0] -= 1
        if not running[0]:
          all_done.set()

  def work(gpu: str, slot: int):
    env = dict(os.environ) if cpu else dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    if shared and not cpu:
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    where = f"worker {slot}" if cpu else f"gpu {gpu}"
    while not stop.is_set():
      item = take()
      if item is None:
        return
      i, run = item
      try:
        state = run_one(sweep_dir, run, config, config_arg, env=env, train_script=train_script,
                        worker=f"cpu.{slot}" if cpu else f"gpu{gpu}.{slot}")
      except Exception as e:  # keep the other workers going; report at the end
        errors.append(f"{run.name}: {e}")
        state = Status.FAILED
      with lock:
        outcomes[state] += 1
        in_flight.discard(run.name)
        changed[0] = True
        lock.notify_all()
        log(f"{_count_text(i, runs, refill)} {where}: {run.name}: "
            f"{_describe(run, state, sweep_dir)}")

  threads = [threading.Thread(target=worker, args=(g, s), daemon=True) for s, g in enumerate(gpus)]
  # An Event, not Thread.join: a join that a signal interrupts can leave the thread looking
  # finished (CPython gh-90882), and the workers must be waited for after an interrupt too.
  try:
    for t in threads:
      t.start()
    while not all_done.wait(0.5):
      pass
  except KeyboardInterrupt:
    stop.set()
    deadline = time.time() + STOP_GRACE_S + 10
    while not all_done.is_set() and time.time() < deadline:
      _ACTIVE.terminate_all()  # again each round: a worker may have just started a trainer
      all_done.wait(0.5)  # the workers record their interrupted attempts
    raise
  if errors:
    raise SweepError("; ".join(errors))
  return outcomes
