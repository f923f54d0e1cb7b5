"""Benchmark 2: preprocessing throughput of preprocessing_ravdess.py against a naive loop.

    python3 benchmarks/preprocessing_throughput.py [--smoke] [--reps N] [--jobs N] [--workdir DIR] [--json-out PATH]

Full size: the 1440-clip demo corpus (24 actors × 60 clips, 48 kHz) to log-mel per config.ini. Each repetition
runs, in alternating order, these processes, timed from outside:
  pipeline  python3 preprocessing_ravdess.py --demo --force --jobs 2 --config WORKSPACE/config.ini
  naive     benchmarks/naive_preprocessing.py: librosa.load(path, sr=16000) + the same padding/cutting and
            feat_analysis.extract_features, one file at a time, one process
  warm      benchmarks/warm_pipeline.py: preprocess(jobs=2, force=True) timed after one clip went through the
            pipeline in the parent process (so it and the workers it forks are past their first call)
and the outputs are checked equal (np.allclose per actor). Both sides use librosa, whose first call in a process
pays lazy imports and numba's start-up (about 0.6 s here). The headline figures are whole-process wall times:
start-up and first call included in both (the pipeline's workers pay the first call in parallel). The "warm"
figures take them out of both: the warm pipeline's preprocess() time against the naive loop's time without its
imports and first file (extrapolated to every file), plus its writing. The audio files are read once before the
first measurement, so both read from the page cache.
The ceiling: the largest whole-process speed-up a librosa-based path could reach on --jobs cores while giving the
same arrays: the naive process's start-up (its wall time minus its steady per-file work and its writing: the
interpreter, the imports that librosa pulls in, librosa's first call), then the naive loop's own librosa.load time
(decoding and soxr_hq resampling, which any path giving the same arrays does too) spread perfectly over the cores,
with features and writing for free.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np

import common

FULL = {"reps": 3}
SMOKE = {"reps": 1}
DEFAULT_JOBS = 2
TARGET_SPEEDUP = 4.0
RTOL, ATOL = 1e-5, 1e-3  # dB: the two paths share the arithmetic, they differ at most in float32 rounding


def warm_page_cache(folder):
    """Read every file under folder once; returns (files, bytes)."""
    files = sorted(path for path in Path(folder).rglob("*") if path.is_file())
    return len(files), sum(len(path.read_bytes()) for path in files)


def audio_seconds(folder):
    """Total duration (s) of the speech .wav files under folder, before padding or cutting."""
    import soundfile as sf
    return sum(sf.info(str(path)).duration for _, path in common.speech_files(folder))


def run_pipeline(workspace, folder, jobs, smoke, repetition):
    """preprocessing_ravdess.py --force as a process; returns its timing."""
    command = [sys.executable, str(common.REPO / "preprocessing_ravdess.py"), "--force", "--jobs", str(jobs),
               "--config", str(workspace["config_path"])]
    command += (["--input", str(workspace["audio_folder"]), "--dataset", workspace["dataset"]] if smoke
                else ["--demo"])
    log = folder / f"pipeline_rep{repetition}.log"
    result = common.run_timed(command, common.project_environment(workspace["config_path"]), folder, log)
    common.check_returncode(result, "preprocessing_ravdess.py", log)
    return result


def run_warm_pipeline(workspace, folder, jobs, repetition):
    """benchmarks/warm_pipeline.py as a process; returns its own phase times."""
    out, log = folder / f"warm_rep{repetition}.json", folder / f"warm_rep{repetition}.log"
    command = [sys.executable, str(common.BENCHMARKS_DIR / "warm_pipeline.py"), str(workspace["config_path"]),
               str(workspace["audio_folder"]), workspace["dataset"], str(jobs), str(out)]
    result = common.run_timed(command, common.project_environment(workspace["config_path"]), folder, log)
    common.check_returncode(result, "the warm pipeline", log)
    return json.loads(out.read_text(encoding="utf-8"))


def run_naive(workspace, folder, repetition):
    """The naive loop as a process; returns its timing, its own phase times and its output path."""
    out_npz, out_json = folder / f"naive_rep{repetition}.npz", folder / f"naive_rep{repetition}.json"
    log = folder / f"naive_rep{repetition}.log"
    command = [sys.executable, str(common.BENCHMARKS_DIR / "naive_preprocessing.py"), str(workspace["config_path"]),
               str(workspace["audio_folder"]), str(out_npz), str(out_json)]
    result = common.run_timed(command, common.project_environment(workspace["config_path"]), folder, log)
    common.check_returncode(result, "the naive loop", log)
    result["phases"] = json.loads(out_json.read_text(encoding="utf-8"))
    result["output"] = out_npz
    return result


def compare_outputs(pipeline_npz, naive_npz):
    """Assert the two feature sets are equal (allclose per actor); returns the largest difference and shape."""
    with np.load(pipeline_npz, allow_pickle=False) as left, np.load(naive_npz, allow_pickle=False) as right:
        if sorted(left.files) != sorted(right.files):
            raise AssertionError(f"actors differ: {sorted(left.files)} vs {sorted(right.files)}")
        largest, clips, shape = 0.0, 0, None
        for actor in left.files:
            a, b = left[actor], right[actor]
            if a.shape != b.shape:
                raise AssertionError(f"actor {actor}: shape {a.shape} vs {b.shape}")
            if not np.allclose(a, b, rtol=RTOL, atol=ATOL):
                raise AssertionError(f"actor {actor}: features differ by up to {np.max(np.abs(a - b))}")
            largest = max(largest, float(np.max(np.abs(a - b))))
            clips, shape = clips + len(a), a.shape[1:]
    return {"allclose": True, "max_abs_difference_db": largest, "clips": clips, "frames_bins": list(shape),
            "rtol": RTOL, "atol": ATOL}


def rates(seconds, clips, audio):
    """Clips per second and seconds of audio per second for a time in seconds."""
    return {"seconds": round(seconds, 3), "clips_per_second": round(clips / seconds, 1),
            "audio_seconds_per_second": round(audio / seconds, 1)}


def summarise(pipeline_runs, naive_runs, warm_runs, clips, audio, check, jobs):
    """Medians over repetitions: end-to-end and warm rates of both, and the speed-ups."""
    pipeline_wall = common.median([run["seconds"] for run in pipeline_runs])
    naive_wall = common.median([run["seconds"] for run in naive_runs])
    naive_phases = [run["phases"] for run in naive_runs]
    first_file = common.median([p["first_file_seconds"] for p in naive_phases])
    steady_file = common.median([p["rest_seconds"] / max(1, p["files"] - 1) for p in naive_phases])
    naive_warm = common.median([p["rest_seconds"] * p["files"] / max(1, p["files"] - 1) + p["write_seconds"]
                                for p in naive_phases])
    pipeline_warm = common.median([run["preprocess_seconds"] for run in warm_runs])
    load_per_clip = common.median([p["rest_load_seconds"] / max(1, p["files"] - 1) for p in naive_phases])
    startup = common.median([run["seconds"] - run["phases"]["files"] * run["phases"]["rest_seconds"] /
                             max(1, run["phases"]["files"] - 1) - run["phases"]["write_seconds"]
                             for run in naive_runs])
    least_seconds = startup + load_per_clip * clips / jobs
    return {
        "clips": clips, "audio_seconds": round(audio, 1), "jobs": jobs, "output_check": check,
        "startup_in": "both (whole processes: interpreter, imports, librosa's first call with numba's start-up)",
        "pipeline": rates(pipeline_wall, clips, audio), "naive": rates(naive_wall, clips, audio),
        "speedup": round(naive_wall / pipeline_wall, 2),
        "pipeline_warm": rates(pipeline_warm, clips, audio), "naive_warm": rates(naive_warm, clips, audio),
        "speedup_warm": round(naive_warm / pipeline_warm, 2),
        "naive_import_seconds": round(common.median([p["import_seconds"] for p in naive_phases]), 3),
        "naive_first_file_seconds": round(first_file, 3),
        "naive_first_call_extra_seconds": round(first_file - steady_file, 3),
        "naive_seconds_per_clip_warm": round(steady_file, 5),
        "naive_load_seconds_per_clip": round(load_per_clip, 5),
        "ceiling": {"naive_startup_seconds": round(startup, 3), "least_seconds": round(least_seconds, 3),
                    "speedup": round(naive_wall / least_seconds, 2)},
        "pipeline_first_call_seconds": round(common.median([run["warm_up_seconds"] for run in warm_runs]), 3),
        "pipeline_walls": [round(run["seconds"], 3) for run in pipeline_runs],
        "naive_walls": [round(run["seconds"], 3) for run in naive_runs],
        "targets": {"speedup_min": TARGET_SPEEDUP, "speedup_met": naive_wall / pipeline_wall >= TARGET_SPEEDUP},
    }


def run_benchmark(workspace, reps, jobs, smoke, folder):
    """Interleaved repetitions (the order reversed in odd ones), output check, summary."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    warm_page_cache(workspace["audio_folder"])
    runs = {"pipeline": [], "naive": [], "warm": []}
    for repetition in range(reps):
        for kind in (("pipeline", "naive", "warm") if repetition % 2 == 0 else ("warm", "naive", "pipeline")):
            if kind == "pipeline":
                runs[kind].append(run_pipeline(workspace, folder, jobs, smoke, repetition))
            elif kind == "naive":
                runs[kind].append(run_naive(workspace, folder, repetition))
            else:
                runs[kind].append(run_warm_pipeline(workspace, folder, jobs, repetition))
    predictors = workspace["features_folder"] / f"{workspace['dataset']}_predictors.npz"
    check = compare_outputs(predictors, runs["naive"][-1]["output"])
    for run in runs["naive"]:
        run["output"].unlink(missing_ok=True)
    return summarise(runs["pipeline"], runs["naive"], runs["warm"], check["clips"],
                     audio_seconds(workspace["audio_folder"]), check, jobs)


def main(argv=None):
    """Command line: run the benchmark, print and write its JSON."""
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each side (default 3; smoke 1)")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="preprocessing worker processes")
    args = parser.parse_args(argv)
    reps = args.reps or (SMOKE if args.smoke else FULL)["reps"]
    workspace = common.ensure_workspace(common.workdir_of(args), args.smoke)
    summary = run_benchmark(workspace, reps, args.jobs, args.smoke, workspace["workdir"] / "preprocessing")
    common.finish({"benchmark": "preprocessing", "smoke": args.smoke, "reps": reps, **summary}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
