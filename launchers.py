"""Launchers: how a fold job's process is started. The one module that starts training.py.

Every fold runs `training.py` on its job file, in a process that has run no TensorFlow, PyTorch or JAX operation,
with its backend, threads and device set in the environment before any framework import (fold_environment). Two
launchers do that, behind one interface (run a job file, get the exit code and the error line):
  ForkServerLauncher  one `training.py --serve` process per backend (and worker) imports Keras once, then forks a
                      fresh child per fold: what the local executor and the smoke run use;
  ProcessLauncher     `python3 training.py JOB.json` in a fresh process: what a SLURM array task and
                      use_model.py final use.
Both write the same attempt header into the fold's log, tee the fold's output into it line by line (so that whoever
tails the log sees each epoch as it ends), and read it with one parser (FoldOutput) for the line protocol below.

The line protocol, printed by training.py: `xval-device: <backend> <the GPUs it sees, or cpu>`, one
`xval-epoch: <epoch>/<epochs> <metrics>` per epoch, and on failure a last `xval-error: <one line>`; after each fold
the fork server prints `xval-exit: <the child's exit code>` (INTERRUPTED_EXIT for a fold stopped by Ctrl-C), and
once, when its imports are done, `xval-ready` (logged with the first fold; benchmarks/tweaks.py times it).
"""
import json
import os
import subprocess
import sys
import time

from registries import BACKENDS
from utility_functions import HOST, PROJECT_DIR

TRAINING_SCRIPT = PROJECT_DIR / "training.py"
SERVE_FLAG = "--serve"
ERROR_PREFIX = "xval-error: "
EPOCH_PREFIX = "xval-epoch: "
EXIT_PREFIX = "xval-exit: "
DEVICE_PREFIX = "xval-device: "
READY_LINE = "xval-ready"
INTERRUPTED_EXIT = 130  # a fold stopped by Ctrl-C (SIGINT) exits with this: stopped, not failed
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # OpenMP and the BLAS libraries
PROGRESS_WIDTH = 150  # characters of the running epoch line shown in a terminal


def fold_environment(backend, threads=None, device=None, base=None):
    """The environment of a fold process: its Keras backend and that backend's variables (where the user's
    environment does not set them), its thread count when threads is given (OpenMP/BLAS and the backend's own), and
    its device when device is not None ('' hides every GPU, for -1; under SLURM the allocation sets
    CUDA_VISIBLE_DEVICES). base: the environment it starts from (default os.environ)."""
    entry = BACKENDS[backend]
    environment = {**entry.environment, **(os.environ if base is None else base),  # the user's own settings win
                   "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    if threads:
        environment.update({name: str(threads) for name in THREAD_VARIABLES})
        for name, value in entry.thread_environment(threads).items():  # flags lists are extended, never replaced
            environment[name] = f"{environment.get(name, '')} {value}".strip() if name.endswith("FLAGS") else value
    if device is not None:
        environment["CUDA_VISIBLE_DEVICES"] = "" if device < 0 else str(device)
    return environment


def attempt_header(where, label):
    """The line that opens one attempt at a fold in its log (tests count attempts by it)."""
    return f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {where}: {label}\n"


class FoldOutput:
    """A fold process's output, read line by line: each line goes to its log; the last error line is kept, the
    devices its backend saw are noted (seen: the GPUs as text, or "cpu"), and in a terminal the running epoch is
    shown on one line."""

    def __init__(self, log, label, show_progress):
        self.log, self.label, self.show_progress = log, label, show_progress
        self.error, self.seen = None, None

    def feed(self, line):
        if self.log is not None:
            try:
                self.log.write(line)
            except OSError as error:  # a full disk: the log stops, the fold and its protocol go on
                print(f"warning: {self.log.name} can no longer be written ({error.strerror}): the rest of "
                      f"{self.label}'s output is not logged", file=sys.stderr, flush=True)
                self.log = None
        if line.startswith(ERROR_PREFIX):
            self.error = line[len(ERROR_PREFIX):].strip()
        elif line.startswith(DEVICE_PREFIX):
            self.seen = line[len(DEVICE_PREFIX):].strip().partition(" ")[2]
        elif line.startswith(EPOCH_PREFIX) and self.show_progress:
            text = f"\r  {self.label}  epoch {line[len(EPOCH_PREFIX):].strip()}"
            print(text[:PROGRESS_WIDTH].ljust(PROGRESS_WIDTH), end="", flush=True)

    def done(self):
        if self.show_progress:
            print("\r" + " " * PROGRESS_WIDTH + "\r", end="", flush=True)


class Launcher:
    """Runs fold jobs, one at a time: run(job_path, log_path, label) -> (the fold process's exit code, its error
    line or None). seen: what the last fold's backend saw (its GPUs, or "cpu"). close() ends it in order, abort()
    at once, wherever it is."""

    def __init__(self, environment, where, show_progress=False):
        self.environment, self.where, self.show_progress, self.seen = environment, where, show_progress, None

    def run(self, job_path, log_path, label):
        raise NotImplementedError

    def close(self):
        pass

    def abort(self):
        pass


class ProcessLauncher(Launcher):
    """`python3 training.py JOB.json` in a fresh process per fold."""

    def run(self, job_path, log_path, label):
        with open(log_path, "a", encoding="utf-8", buffering=1) as log:
            output = FoldOutput(log, label, self.show_progress)
            output.feed(attempt_header(self.where, label))
            process = subprocess.Popen([sys.executable, str(TRAINING_SCRIPT), str(job_path)], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                       env=self.environment, cwd=str(PROJECT_DIR), bufsize=1)
            try:
                for line in process.stdout:
                    output.feed(line)
                code = process.wait()
            except BaseException:  # the launching process is being stopped (SIGTERM, Ctrl-C): so is its fold
                process.kill()
                process.wait()
                raise
            finally:
                output.done()
        self.seen = output.seen
        return code, output.error


class ForkServerLauncher(Launcher):
    """A `training.py --serve` process, started on first use (or at once with start()): it imports Keras on its
    backend without running any operation, then forks a fresh child per fold, so each fold still has its own
    memory and crash boundary, and sees only this launcher's device."""

    def __init__(self, environment, where=None, show_progress=False):
        super().__init__(environment, where or f"{HOST} pid {os.getpid()}", show_progress)
        self.server = None
        self.used = False  # whether a fold has been sent to the server

    def start(self):
        """Start the fold server (its import lines go to the first fold's log)."""
        self.server = subprocess.Popen([sys.executable, str(TRAINING_SCRIPT), SERVE_FLAG], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       encoding="utf-8", errors="replace", env=self.environment,
                                       cwd=str(PROJECT_DIR), bufsize=1)

    def run(self, job_path, log_path, label):
        if self.server is None or self.server.poll() is not None:
            self.start()
        self.used = True
        code = None
        with open(log_path, "a", encoding="utf-8", buffering=1) as log:
            output = FoldOutput(log, label, self.show_progress)
            output.feed(attempt_header(self.where, label))
            try:
                self.server.stdin.write(json.dumps(str(job_path)) + "\n")  # one line, whatever the path holds
                self.server.stdin.flush()
            except OSError:
                pass  # the server died: its output and exit code below say why
            for line in self.server.stdout:
                if line.startswith(EXIT_PREFIX):
                    code = int(line[len(EXIT_PREFIX):])
                    break
                output.feed(line)
            if code is None:  # the server itself ended
                code = self.server.wait()
                output.feed(f"{ERROR_PREFIX}the fold server ended with exit code {code}\n")
                self.server = None
            output.done()
        self.seen = output.seen
        return code, output.error

    def abort(self):
        """Stop the server at once, wherever it is (it may still be importing TensorFlow)."""
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        self.server = None

    def close(self):
        """Stop the server: end of input, then wait; one that has run no fold is stopped at once."""
        if not self.used:
            self.abort()
        if self.server is not None and self.server.poll() is None:
            self.server.stdin.close()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None


def no_gpu_warning(asked, backend, cpu_option):
    """The one line that says a GPU was asked for (asked: e.g. "GPU 1") but backend saw none, so training ran on the
    CPU; cpu_option: how to ask for the CPU instead."""
    return (f"warning: {asked} was asked for, but {backend} sees no GPU there, so training runs on the CPU: "
            f"{cpu_option}, or check the GPU (nvidia-smi) and the CUDA build of {backend}")
