"""Shared plumbing of the benchmarks: the isolated workspace, child processes, memory readings and JSON output.

Every benchmark works in a workspace folder of its own (default benchmarks/results/work/, git-ignored) holding a
config.ini whose [paths] point inside it, the demo corpus and its features; XVAL_CONFIG names that config.ini in
every process started here, so nothing is ever written into the repository's data/ or experiments/.
Nothing here keeps state between calls: every function takes what it needs and returns what it made.
"""
import argparse
import configparser
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = REPO / "benchmarks"
RESULTS_DIR = BENCHMARKS_DIR / "results"
DEFAULT_WORKDIR = RESULTS_DIR / "work"
TRACE_HOOK_DIR = BENCHMARKS_DIR / "tracehook"  # holds the sitecustomize.py that traces xval's phases
TRACE_ENV_VAR = "XVAL_BENCH_TRACE"  # path of the JSON-lines trace file; unset = no tracing

if str(REPO) not in sys.path:  # the project's modules (demo_corpus, preprocessing_ravdess, ...) by name
    sys.path.insert(0, str(REPO))

DATASET = "ravdess_demo"
# The full demo corpus: 24 actors x 60 clips of 2.5-3.5 s (demo_corpus's defaults), features per config.ini.
FULL_CORPUS = {}
# Smoke mode: 4 actors x 14 clips of about 1 s, small log-mel features (as the test suite's tiny dataset).
SMOKE_CORPUS = {"n_actors": 4, "emotions": ("neutral", "happy", "sad", "angry"), "repetitions": (1,),
                "clip_seconds_range": (0.8, 1.2)}
SMOKE_SETTINGS = {"features": {"n_fft": "512", "win_length": "512", "hop_length": "256", "n_mels": "32"},
                  "preprocessing": {"clip_seconds": "1.0"}}
SPEECH_CHANNEL = "01"  # RAVDESS vocal channel code of speech (the second field of a file name)
MEMORY_SAMPLE_SECONDS = 0.05
KIB = 1024
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------------------------
# Command line shared by every benchmark script

def base_parser(description):
    """An argument parser with the options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny synthetic corpus, 1 epoch, 2 folds: checks the script runs (seconds)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help=f"workspace folder (default {DEFAULT_WORKDIR.relative_to(REPO)}, or "
                             f"{DEFAULT_WORKDIR.relative_to(REPO)}_smoke with --smoke)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON here")
    return parser


def workdir_of(args):
    """The workspace folder of parsed arguments (absolute)."""
    if args.workdir is not None:
        return args.workdir.resolve()
    return DEFAULT_WORKDIR.with_name(DEFAULT_WORKDIR.name + ("_smoke" if args.smoke else ""))


# ----------------------------------------------------------------------------------------------------------------
# The workspace: config.ini, corpus, features

def write_config(folder, smoke):
    """folder/config.ini: the repository's config.ini with every [paths] entry inside folder (and the smoke
    feature settings in smoke mode); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(REPO / "config.ini", encoding="utf-8")
    for key, name in (("ravdess_folder", "ravdess"), ("demo_folder", "demo_audio"),
                      ("features_folder", "features"), ("experiment_folder", "experiments")):
        parser.set("paths", key, str(folder / name))
    for section, values in (SMOKE_SETTINGS if smoke else {}).items():
        for key, value in values.items():
            parser.set(section, key, value)
    path = folder / "config.ini"
    with open(path, "w", encoding="utf-8") as handle:
        parser.write(handle)
    return path


def ensure_workspace(workdir, smoke, jobs=2):
    """Config, demo corpus and features in workdir (each made only when missing or changed).

    Returns {"workdir", "config_path", "audio_folder", "features_folder", "dataset"}.
    """
    import demo_corpus
    import preprocessing_ravdess
    from utility_functions import load_config
    config_path = write_config(workdir, smoke)
    config = load_config(config_path)
    audio = config["paths"]["demo_folder"]
    corpus = SMOKE_CORPUS if smoke else FULL_CORPUS
    demo_corpus.make_demo_corpus(audio, jobs=1 if smoke else jobs, **corpus)
    preprocessing_ravdess.preprocess(audio, DATASET, config_path, jobs=1 if smoke else jobs, quiet=True)
    return {"workdir": Path(workdir), "config_path": config_path, "audio_folder": Path(audio),
            "features_folder": Path(config["paths"]["features_folder"]), "dataset": DATASET}


def project_environment(config_path, trace_file=None):
    """Environment of a process started here: the project importable, the workspace config in use, TensorFlow's
    C++ logging quiet, and the tracing hook active when trace_file is given."""
    python_path = [str(REPO)]
    environment = dict(os.environ, XVAL_CONFIG=str(config_path), TF_CPP_MIN_LOG_LEVEL="3",
                       PYTHONUNBUFFERED="1")
    environment.pop(TRACE_ENV_VAR, None)
    if trace_file is not None:
        python_path.insert(0, str(TRACE_HOOK_DIR))
        environment[TRACE_ENV_VAR] = str(trace_file)
    if environment.get("PYTHONPATH"):
        python_path.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(python_path)
    return environment


def speech_files(folder):
    """The RAVDESS speech .wav files under folder (vocal channel 01), sorted by (actor, file name) as
    preprocessing_ravdess sorts its clips: [(actor '01', path)]."""
    files = []
    for path in Path(folder).rglob("*.wav"):
        fields = path.stem.split("-")
        if len(fields) == 7 and fields[1] == SPEECH_CHANNEL:
            files.append((fields[6], path))
    return sorted(files, key=lambda entry: (entry[0], entry[1].name))


# ----------------------------------------------------------------------------------------------------------------
# Processes and memory

def read_status(pid="self"):
    """VmRSS and VmHWM (peak RSS) of a process in bytes, from /proc/<pid>/status; {} when it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * KIB
    except (OSError, ValueError, IndexError):
        return {}
    return values


class MemorySampler:
    """Samples VmRSS and VmHWM of one process from outside, every MEMORY_SAMPLE_SECONDS, in a thread.

    Use as a context manager around the process's life; .samples is [(monotonic time, VmRSS, VmHWM)].
    """

    def __init__(self, pid, period=MEMORY_SAMPLE_SECONDS):
        self.pid, self.period, self.samples = pid, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            status = read_status(self.pid)
            if status:
                self.samples.append((time.monotonic(), status.get("VmRSS", 0), status.get("VmHWM", 0)))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        return False


def wait_with_usage(process):
    """Wait for a Popen'd process with wait4: (exit code, its peak RSS in bytes from the kernel's rusage)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss * KIB


def run_timed(command, environment, cwd, log_path, sample_memory=False):
    """Run command (a list, no shell) to the end with its output in log_path.

    Returns {"returncode", "seconds" (wall, from just before the start to the end), "started" (monotonic time
    just before the start), "ended", "max_rss" (peak RSS of the process in bytes, from wait4), and
    "memory_samples" [(time, VmRSS, VmHWM)] sampled from outside when sample_memory}.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=str(cwd))
        if sample_memory:
            with MemorySampler(process.pid) as sampler:
                code, max_rss = wait_with_usage(process)
            samples = sampler.samples
        else:
            (code, max_rss), samples = wait_with_usage(process), None
        ended = time.monotonic()
    result = {"returncode": code, "seconds": ended - started, "started": started, "ended": ended,
              "max_rss": max_rss}
    if samples is not None:
        result["memory_samples"] = samples
    return result


def check_returncode(result, what, log_path):
    """Raise RuntimeError with the end of log_path when a run_timed result failed."""
    if result["returncode"] != 0:
        tail = Path(log_path).read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{what} ended with exit code {result['returncode']}; end of {log_path}:\n{tail}")


def warm_up_imports(environment, cwd, log_path):
    """Start one process that imports TensorFlow, Keras and scikit-learn, so that no measured run pays for
    reading them from a cold disk cache first. Returns its wall time."""
    code = "import tensorflow, keras, sklearn.metrics, scipy.stats, h5py"
    result = run_timed([sys.executable, "-c", code], environment, cwd, log_path)
    check_returncode(result, "the import warm-up", log_path)
    return result["seconds"]


def cpu_counters():
    """CPU seconds so far: the whole machine's busy time (/proc/stat), and this process's own plus its waited-for
    descendants' (getrusage). The difference of two readings tells how much CPU others used meanwhile."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / ticks  # user nice system idle iowait irq softirq steal (guest is in user)
    ours = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))
    return {"time": time.monotonic(), "machine_busy": busy, "ours": ours}


def foreign_load(before, after):
    """CPU used by processes other than ours between two cpu_counters() readings: seconds, and the share of the
    machine's capacity (nproc x wall) it took."""
    wall = after["time"] - before["time"]
    foreign = max(0.0, (after["machine_busy"] - before["machine_busy"]) - (after["ours"] - before["ours"]))
    return {"foreign_cpu_seconds": round(foreign, 1),
            "foreign_share_of_capacity": round(foreign / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else 0.0}


# ----------------------------------------------------------------------------------------------------------------
# Numbers and output

def median(values):
    """Median of a non-empty sequence of numbers."""
    return float(statistics.median(values))


def read_trace(path):
    """The records of a JSON-lines trace file written by tracehook/sitecustomize.py ([] if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_json(path, data):
    """Write data as indented JSON to path (folders made); a temporary file renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temp, path)


def machine_info():
    """nproc, CPU model, RAM, Python and package versions of this machine."""
    from importlib import metadata
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                         model)
    except OSError:
        pass
    ram = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            ram = next(int(line.split()[1]) * KIB for line in handle if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("tensorflow", "keras", "numpy", "librosa", "numba", "scikit-learn", "soxr"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(ram / 2**30, 1) if ram else None,
            "python": platform.python_version(), "platform": platform.platform(), **versions}


def finish(result, args):
    """Print a benchmark's result as JSON on stdout and write it to --json-out when given."""
    if args.json_out is not None:
        write_json(args.json_out, result)
    print(json.dumps(result, indent=1))
