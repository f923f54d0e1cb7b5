"""Benchmark 3: memory of an xval routine's process over many instances, and of one fold process.

    python3 benchmarks/memory.py [--smoke] [--instances N] [--workdir DIR] [--json-out PATH]

Full size: a routine of 10 instances of the example model (1 epoch, 2 folds, early stopping off) on the demo
corpus, run as a real process with benchmarks/tracehook on its PYTHONPATH.
  Routine process: VmRSS and VmHWM (peak RSS) sampled from outside every 50 ms from /proc/<pid>/status, and read
  inside the process after each instance and its spreadsheet rebuild (the trace). Growth = peak at the end - peak
  after the first instance's cycle (target <= 50 MB).
  Fold process: fold 1 of instance 1 rerun by hand as a fresh process (python3 training.py JOB.json, as the
  README documents; model and result redirected), its peak RSS from the kernel (wait4's ru_maxrss), against the
  fold's arrays (float32 features and targets of its train, validation and test clips, as stacked) and
  TensorFlow's own baseline for this fold: the peak RSS of plain Keras (benchmarks/plain_keras.py, a fresh
  process) fitting the same model with the same batch size and epochs on one batch of clips per split, i.e.
  what TensorFlow needs to train this model whatever the data (its activations at this batch size, its graphs).
  Target: fold peak <= 2.5 x arrays + that baseline. For reference: the peak RSS of a process that imports
  TensorFlow and fits a trivial one-unit model (benchmarks/tf_baseline.py, run while the routine runs: nothing
  here is timed), and the same fold's full fit with plain Keras, measured the same way. The folds forked inside
  the routine are reported too (VmHWM, PSS, private memory at the end of each fold), but their RSS is not
  comparable with a fresh process's: a forked process counts only the pages of the server it touches.
"""
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import common
import overhead

FULL = {"instances": 10, "num_folds": 2, "epochs": 1, "baseline_runs": 2}
SMOKE = {"instances": 2, "num_folds": 2, "epochs": 1, "baseline_runs": 1}
EXAMPLE_INSTANCE = 1  # the example routine's instance whose strings every instance starts from
LAMBDAS = (0.001, 0.002, 0.003, 0.005, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05)  # one per instance, cycled
TARGET_PARENT_GROWTH_BYTES = 50 * common.MIB
TARGET_FOLD_FACTOR = 2.5


def memory_instances(count, epochs):
    """count instances of the example model, each with its own L2 strength, exactly `epochs` epochs."""
    base = overhead.benchmark_instances((EXAMPLE_INSTANCE,), epochs)[EXAMPLE_INSTANCE]
    instances = {}
    for instance in range(1, count + 1):
        strength = LAMBDAS[(instance - 1) % len(LAMBDAS)]
        strings = [text for text in base if not text.startswith(("regularization_lambda", "comment_1"))]
        instances[instance] = strings + [f"regularization_lambda = {strength}", f'comment_1 = "l2 {strength}"']
    return instances


def tf_baseline(workspace, folder, runs):
    """Median peak RSS (bytes, from wait4) of benchmarks/tf_baseline.py over runs processes, and each run's."""
    peaks = []
    for run in range(runs):
        out, log = folder / f"tf_baseline_{run}.json", folder / f"tf_baseline_{run}.log"
        result = common.run_timed([sys.executable, str(common.BENCHMARKS_DIR / "tf_baseline.py"), str(out)],
                                  common.project_environment(workspace["config_path"]), folder, log)
        common.check_returncode(result, "the TensorFlow baseline", log)
        peaks.append(result["max_rss"])
    return common.median(peaks), peaks


def fold_job(experiment_dir):
    """The job of fold 1 of instance 1 of the routine (written by xval into its logs/)."""
    jobs = sorted((experiment_dir / "logs").glob("*_run1_fold1.job.json"))
    return json.loads(jobs[0].read_text(encoding="utf-8"))


def standalone_fold(workspace, job, folder):
    """Rerun a fold by hand (python3 training.py JOB.json, as the README documents) as a fresh process, its model
    and result redirected into folder; returns its peak RSS in bytes (wait4)."""
    folder.mkdir(parents=True, exist_ok=True)
    job_path = folder / "job.json"
    common.write_json(job_path, dict(job, model_path=str(folder / "model.hdf5"),
                                     result_path=str(folder / "result.json")))
    log = folder / "fold.log"
    result = common.run_timed([sys.executable, str(common.REPO / "training.py"), str(job_path)],
                              common.project_environment(workspace["config_path"]), folder, log)
    common.check_returncode(result, "the standalone fold", log)
    return result["max_rss"]


def plain_fold(workspace, job, folder):
    """The fold's fit with plain Keras (benchmarks/plain_keras.py) as a fresh process: its peak RSS in bytes.

    job: an xval fold job, or one_batch_job's (then this is the model's baseline)."""
    folder.mkdir(parents=True, exist_ok=True)
    job_path, out, log = folder / "plain_job.json", folder / "plain_out.json", folder / "plain.log"
    common.write_json(job_path, {"features_folder": job["features_folder"], "dataset": job["dataset"],
                                 "folds": [{key: job[key] for key in ("fold", "train_items", "val_items",
                                                                      "test_items")}],
                                 "instances": [job["parameters"]]})
    result = common.run_timed([sys.executable, str(common.BENCHMARKS_DIR / "plain_keras.py"), str(job_path),
                               str(out)], common.project_environment(workspace["config_path"]), folder, log)
    common.check_returncode(result, "the plain Keras fold", log)
    return result["max_rss"]


def one_batch_job(dataset, job, folder):
    """The job with one batch of clips per split: the first batch_size clips of the first item of each split,
    written as a dataset of its own in folder (so that nothing else is loaded). dataset: (predictors, targets)
    as load_dataset returns them."""
    predictors, targets = dataset
    clips = job["parameters"]["batch_size"]
    items = {split: job[f"{split}_items"][0] for split in ("train", "val", "test")}
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arrays in (("predictors", predictors), ("target", targets)):
        np.savez(folder / f"{job['dataset']}_{kind}.npz", **{item: arrays[item][:clips] for item in items.values()})
    return dict(job, features_folder=str(folder), **{f"{split}_items": [item] for split, item in items.items()})


def fold_array_bytes(dataset, job):
    """Bytes of a fold's stacked arrays: float32 features and targets of its train, validation and test clips.
    dataset: (predictors, targets) as load_dataset returns them."""
    predictors, targets = dataset
    items = job["train_items"] + job["val_items"] + job["test_items"]
    return sum(predictors[item].size * 4 + targets[item].size * 4 for item in items)


def readings_after_instances(records, parent_pid):
    """The routine process's memory at the end of each instance's cycle: after the instance and the spreadsheet
    rebuild that follows it (the last reading before the next instance starts): [{"VmRSS", "VmHWM"}]."""
    instances = overhead.spans(records, "xval.run_instance", parent_pid)
    readings = sorted((r for name in ("xval.run_instance", "xval.rebuild_spreadsheet")
                       for r in overhead.spans(records, name, parent_pid) if "VmHWM" in r), key=lambda r: r["t1"])
    cycles = []
    for index, instance in enumerate(instances):
        end = instances[index + 1]["t0"] if index + 1 < len(instances) else float("inf")
        last = [r for r in readings if instance["t0"] <= r["t1"] <= end][-1]
        cycles.append({"VmRSS": last["VmRSS"], "VmHWM": last["VmHWM"]})
    return cycles


def parent_memory(records, samples, parent_pid):
    """The routine process's memory after each instance and its spreadsheet rebuild (inside readings) and over its
    life (outside samples)."""
    after_instances = readings_after_instances(records, parent_pid)
    sampled_peak = max((hwm for _, _, hwm in samples), default=0)
    end_peak = max(after_instances[-1]["VmHWM"], sampled_peak)
    first = after_instances[0]["VmHWM"]
    return {"after_each_instance_mib": [round(r["VmHWM"] / common.MIB, 1) for r in after_instances],
            "rss_after_each_instance_mib": [round(r["VmRSS"] / common.MIB, 1) for r in after_instances],
            "peak_after_first_instance_mib": round(first / common.MIB, 1),
            "peak_at_end_mib": round(end_peak / common.MIB, 1),
            "sampled_peak_mib": round(sampled_peak / common.MIB, 1), "samples": len(samples),
            "growth_mib": round((end_peak - first) / common.MIB, 1),
            "growth_met": end_peak - first <= TARGET_PARENT_GROWTH_BYTES}


def fold_memory(records, standalone_peak, plain_peak, arrays, baseline, trivial_baseline):
    """The fold process against the target (the standalone fold: a fresh process, like the baseline), and the
    forked folds of the routine (their RSS counts only the pages of the server they touch)."""
    forked = [r for r in records if r["name"] == "fold.run_fold"]
    before_fork = [r["VmRSS"] for r in records if r["name"] == "server.before_fork" and "VmRSS" in r]
    limit = TARGET_FOLD_FACTOR * arrays + baseline

    def mib(value):
        return round(value / common.MIB, 1)

    return {"standalone_peak_mib": mib(standalone_peak), "arrays_mib": mib(arrays), "baseline_mib": mib(baseline),
            "limit_mib": mib(limit), "over_baseline_mib": mib(standalone_peak - baseline),
            "factor": round((standalone_peak - baseline) / arrays, 2), "met": standalone_peak <= limit,
            "trivial_baseline_mib": mib(trivial_baseline),
            "factor_over_trivial_baseline": round((standalone_peak - trivial_baseline) / arrays, 2),
            "plain_keras_peak_mib": mib(plain_peak), "over_plain_keras_mib": mib(standalone_peak - plain_peak),
            "forked_peak_mib_median": mib(common.median([r["VmHWM"] for r in forked])),
            "forked_pss_mib_median": mib(common.median([r.get("Pss", 0) for r in forked])),
            "forked_private_mib_median": mib(common.median(
                [r.get("Private_Dirty", 0) + r.get("Private_Clean", 0) for r in forked])),
            "server_rss_before_fork_mib": mib(common.median(before_fork)) if before_fork else None}


def run_benchmark(workspace, size, folder):
    """The traced many-instance routine with outside sampling and, meanwhile (nothing here is timed, and a
    process's peak RSS does not depend on what else runs), the TensorFlow baseline; then the standalone fold."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    experiments = folder / "experiments"
    routine = overhead.write_routine(folder, memory_instances(size["instances"], size["epochs"]), 1,
                                     size["num_folds"], experiments)
    trace, log = folder / "trace.jsonl", folder / "routine.log"
    with ThreadPoolExecutor(max_workers=1) as pool:
        baseline_future = pool.submit(tf_baseline, workspace, folder, size["baseline_runs"])
        result = common.run_timed([sys.executable, str(routine)],
                                  common.project_environment(workspace["config_path"], trace), folder, log,
                                  sample_memory=True)
        baseline, baseline_runs = baseline_future.result()
    common.check_returncode(result, "the memory routine", log)
    records = common.read_trace(trace)
    parent_pid = overhead.spans(records, "xval.launch")[0]["pid"]
    job = fold_job(experiments / "experiment_1")
    from utility_functions import load_dataset
    dataset = load_dataset(workspace["features_folder"], workspace["dataset"])
    small_job = one_batch_job(dataset, job, folder / "one_batch_features")
    with ThreadPoolExecutor(max_workers=2) as pool:
        standalone = pool.submit(standalone_fold, workspace, job, folder / "standalone_fold")
        plain = pool.submit(plain_fold, workspace, job, folder / "plain_fold")
        model_baseline = pool.submit(plain_fold, workspace, small_job, folder / "model_baseline")
        standalone_peak, plain_peak, model_peak = standalone.result(), plain.result(), model_baseline.result()
    arrays = fold_array_bytes(dataset, job)
    spreadsheet = [round(span["t1"] - span["t0"], 2) for span in overhead.spans(records, "excel.write_spreadsheet")]
    return {"routine_seconds": round(result["seconds"], 1), "spreadsheet_seconds_per_instance": spreadsheet,
            "parent": parent_memory(records, result["memory_samples"], parent_pid),
            "fold": fold_memory(records, standalone_peak, plain_peak, arrays, model_peak, baseline),
            "tf_baseline_runs_mib": [round(peak / common.MIB, 1) for peak in baseline_runs]}


def main(argv=None):
    """Command line: run the benchmark, print and write its JSON."""
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=None, help="instances of the routine (default 10)")
    args = parser.parse_args(argv)
    size = dict(SMOKE if args.smoke else FULL)
    if args.instances:
        size["instances"] = args.instances
    workspace = common.ensure_workspace(common.workdir_of(args), args.smoke)
    summary = run_benchmark(workspace, size, workspace["workdir"] / "memory")
    common.finish({"benchmark": "memory", "smoke": args.smoke, "size": size, **summary,
                   "targets": {"parent_growth_max_mib": TARGET_PARENT_GROWTH_BYTES / common.MIB,
                               "fold_factor_max": TARGET_FOLD_FACTOR,
                               "parent_met": summary["parent"]["growth_met"], "fold_met": summary["fold"]["met"]}},
                  args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
