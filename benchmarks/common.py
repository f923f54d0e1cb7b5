"""Shared plumbing of the benchmarks: the workspace, processes measured from outside, numbers, output.

The workspace (default benchmarks/results/work, git-ignored) holds a config.ini whose [paths] point inside it,
the demo corpus and its features; every process started here gets XVAL_CONFIG = that config.ini, so nothing is
written into the repository's data/ or experiments/. Every measured program is a whole process: its wall time
and peak memory are read from outside (wait4, /proc/PID/status), never by patching the product.
"""
import argparse
import configparser
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
DATASET = "ravdess_demo"
MIB = 2**20
# --smoke: 4 actors x 14 clips of about 1 s and small log-mel features (the test suite's tiny dataset)
SMOKE_CORPUS = {"n_actors": 4, "emotions": ("neutral", "happy", "sad", "angry"), "repetitions": (1,),
                "clip_seconds_range": (0.8, 1.2)}
SMOKE_SETTINGS = {"features": {"n_fft": "512", "win_length": "512", "hop_length": "256", "n_mels": "32"},
                  "preprocessing": {"clip_seconds": "1.0"}}


def start(name, description, options=()):
    """A measurement script's start: its command line (WORKDIR OUT.json [--smoke], and options: (flags, keywords)
    of argparse's add_argument each), the workspace's paths and the script's own folder in it (named name, or
    name_BACKEND with a --backend other than tensorflow), emptied. Returns (args, ws, folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("workdir", type=Path, help="workspace made by benchmarks/run.py")
    parser.add_argument("out", type=Path, help="result JSON: {'rows': [...], 'figures': {...}}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs (seconds)")
    for flags, keywords in options:
        parser.add_argument(*flags, **keywords)
    args = parser.parse_args()
    if getattr(args, "backend", "tensorflow") != "tensorflow":
        name = f"{name}_{args.backend}"
    ws = workspace(args.workdir)
    shutil.rmtree(ws["workdir"] / name, ignore_errors=True)
    (ws["workdir"] / name).mkdir(parents=True)
    return args, ws, ws["workdir"] / name


def workspace(workdir):
    """Paths of a workspace: {'workdir', 'config', 'audio' (the demo corpus), 'features'}."""
    workdir = Path(workdir).resolve()
    return {"workdir": workdir, "config": workdir / "config.ini", "audio": workdir / "demo_audio",
            "features": workdir / "features"}


def make_workspace(workdir, smoke):
    """Write the workspace's config.ini, then make its demo corpus and features (only what is missing)."""
    ws = workspace(workdir)
    ws["workdir"].mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(REPO / "config.ini", encoding="utf-8")
    paths = {"ravdess_folder": "ravdess", "demo_folder": "demo_audio", "features_folder": "features",
             "experiment_folder": "experiments"}
    for section, values in {"paths": paths, **(SMOKE_SETTINGS if smoke else {})}.items():
        for key, value in values.items():
            parser.set(section, key, str(ws["workdir"] / value) if section == "paths" else value)
    with open(ws["config"], "w", encoding="utf-8") as handle:
        parser.write(handle)
    sys.path.insert(0, str(REPO))
    import demo_corpus
    import preprocessing_ravdess
    demo_corpus.make_demo_corpus(ws["audio"], jobs=os.cpu_count(), **(SMOKE_CORPUS if smoke else {}))
    preprocessing_ravdess.preprocess(ws["audio"], DATASET, ws["config"], jobs=os.cpu_count(), quiet=True)
    return ws


def environment(ws, repo=REPO):
    """Environment of a measured process: the project (repo: a copy of it) importable, the workspace's config."""
    return dict(os.environ, XVAL_CONFIG=str(ws["config"]), PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONUNBUFFERED="1")


def peak_rss(pid):
    """VmHWM (the peak resident memory so far) of a live process in bytes, from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None


def run(command, env, log, sample=None, period=0.05):
    """Run command to its end, output into log. Returns {'seconds': wall, 'peak_mib': the peak RSS of the
    process and its descendants from wait4, 'samples': [sample(pid) every period seconds] when sample is given}.
    Raises RuntimeError with the end of the log when it fails."""
    samples, done = [], threading.Event()
    with open(log, "wb") as output:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))

        def poll():
            while not done.wait(period):
                samples.append(sample(process.pid))
        poller = threading.Thread(target=poll, daemon=True)
        if sample:
            poller.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
    if process.returncode != 0:
        tail = Path(log).read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, command))} ended with exit code {process.returncode}:\n{tail}")
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "samples": samples}


def cpu_counters():
    """The machine's busy CPU seconds (/proc/stat) and this process's own plus its waited-for children's."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:8]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    ours = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))
    return {"time": time.monotonic(), "busy": busy, "ours": ours}


def other_load(before, after):
    """Share of the machine's CPU capacity (cores x wall) that processes other than ours used in between."""
    wall = after["time"] - before["time"]
    foreign = max(0.0, after["busy"] - before["busy"] - (after["ours"] - before["ours"]))
    return round(min(1.0, foreign / (wall * os.cpu_count())), 3) if wall > 0 else 0.0


def spread(values):
    """Median, min, max and count of a list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def show(stats, unit="s", digits=2):
    """'3.41 s (3.30-3.52, n=5)' of a spread()."""
    return (f"{stats['median']:.{digits}f} {unit} ({stats['min']:.{digits}f} to {stats['max']:.{digits}f}, "
            f"n={stats['n']})")


def row(figure, value, target="", met=None):
    """One table row; met None means the row has no target."""
    return {"figure": figure, "value": value, "target": target, "met": "" if met is None else "yes" if met else "NO"}


def write_json(path, data):
    """Write data as indented JSON (folders made)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")

