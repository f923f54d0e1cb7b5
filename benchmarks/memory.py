"""Memory: the routine process over many instances, and one fold process against plain Keras.

    python3 benchmarks/memory.py WORKDIR OUT.json [--smoke]

A routine of 10 instances of the example model (one L2 strength each, 2 folds, 1 epoch) on the demo corpus. Its
own process's peak RSS (VmHWM) is read from outside every 50 ms (/proc/PID/status): growth = the peak at the end
minus the peak when instance 1's spreadsheet appeared. Then three fresh processes, their peak RSS from wait4:
fold 1 of instance 1 rerun by hand (python3 training.py JOB.json, on the job file the routine wrote in logs/),
plain Keras fitting the same model with one batch of clips per split (what TensorFlow needs to train this model,
whatever the data: the baseline) and plain Keras fitting the whole fold. Figure: (fold peak - baseline) / arrays,
the arrays being the fold's float32 features and targets.
"""
import json
import sys


import common
import overhead

INSTANCES = {False: 10, True: 2}  # by --smoke
TARGET_GROWTH_MIB, TARGET_FACTOR = 50, 2.5


def routine_growth(ws, folder, count):
    """Run the routine of count instances; returns its peak RSS (MiB) after instance 1's spreadsheet and at the
    end, and the job file of its first fold."""
    base = overhead.example_instances((1,), epochs=1)[1]
    base = [text for text in base if not text.startswith(("regularization_lambda", "comment_1"))]
    instances = {i: base + [f"regularization_lambda = {0.001 * i:g}", f'comment_1 = "l2 {0.001 * i:g}"']
                 for i in range(1, count + 1)}
    spreadsheet = folder / "experiment_1" / f"{common.DATASET}_exp1_results_spreadsheet.xlsx"
    run = overhead.run_routine(ws, folder, instances, 1, 2, sample=lambda pid: (common.peak_rss(pid),
                                                                               spreadsheet.exists()))
    peaks = [(peak / common.MIB, written) for peak, written in run["samples"] if peak]
    after_first = [peak for peak, written in peaks if written]
    if not after_first:
        raise RuntimeError(f"the routine wrote no {spreadsheet.name} while it ran (see its log in {folder})")
    return after_first[0], peaks[-1][0], run["folder"] / "logs" / f"{common.DATASET}_exp1_run1_fold1.job.json"


def fresh_peaks(ws, folder, job_path):
    """Peak RSS (MiB) of the fold rerun by hand, of plain Keras on one batch per split, of plain Keras on the fold."""
    job = json.loads(job_path.read_text(encoding="utf-8"))
    rerun = dict(job, model_path=str(folder / "rerun.hdf5"), result_path=str(folder / "rerun.json"))
    common.write_json(folder / "rerun_job.json", rerun)
    plain = {"features_folder": job["features_folder"], "dataset": job["dataset"], "instances": [job["parameters"]],
             "folds": [{key: job[key] for key in ("train_items", "val_items", "test_items")}]}
    common.write_json(folder / "plain_job.json", plain)
    env, plain_keras = common.environment(ws), [sys.executable, str(common.BENCHMARKS / "plain_keras.py"),
                                                str(folder / "plain_job.json"), str(folder / "plain_out.json")]
    fold = common.run([sys.executable, str(common.REPO / "training.py"), str(folder / "rerun_job.json")], env,
                      folder / "rerun.log")
    baseline = common.run(plain_keras + ["--one-batch"], env, folder / "baseline.log")
    whole = common.run(plain_keras, env, folder / "plain.log")
    return fold["peak_mib"], baseline["peak_mib"], whole["peak_mib"], job


def array_mib(ws, job):
    """MiB of a fold's stacked arrays: float32 features and targets of its train, validation and test clips."""
    items = job["train_items"] + job["val_items"] + job["test_items"]
    from utility_functions import load_dataset
    total = sum(arrays[item].size * 4 for arrays in load_dataset(ws["features"], common.DATASET) for item in items)
    return total / common.MIB


def main():
    """The routine, then the fresh processes, then the table rows."""
    args, ws, folder = common.start("memory", __doc__.splitlines()[0])
    count = INSTANCES[args.smoke]
    after_first, at_end, job_path = routine_growth(ws, folder, count)
    fold, baseline, whole, job = fresh_peaks(ws, folder, job_path)
    arrays = array_mib(ws, job)
    growth, factor = at_end - after_first, (fold - baseline) / arrays
    rows = [common.row(f"routine of {count} instances x 2 folds x 1 epoch, demo corpus", ""),
            common.row("routine process peak RSS after instance 1's spreadsheet / at the end (MiB)",
                       f"{after_first:.0f} / {at_end:.0f}"),
            common.row("routine process peak growth (MiB)", f"{growth:.1f}", f"<= {TARGET_GROWTH_MIB}",
                       growth <= TARGET_GROWTH_MIB),
            common.row("fold process (training.py JOB.json) peak RSS (MiB)", f"{fold:.0f}"),
            common.row("baseline: plain Keras, same model, one batch per split, peak RSS (MiB)", f"{baseline:.0f}"),
            common.row("fold's arrays (MiB)", f"{arrays:.1f}"),
            common.row("fold: (peak - baseline) / arrays", f"{factor:.2f}", f"<= {TARGET_FACTOR}",
                       factor <= TARGET_FACTOR),
            common.row("plain Keras on the whole fold, peak RSS (MiB); xval fold - it",
                       f"{whole:.0f}; {fold - whole:+.0f}")]
    common.write_json(args.out, {"rows": rows, "figures": {
        "routine_peak_after_first_mib": after_first, "routine_peak_end_mib": at_end, "growth_mib": growth,
        "fold_peak_mib": fold, "baseline_mib": baseline, "arrays_mib": arrays, "factor": factor,
        "plain_fold_peak_mib": whole}})


if __name__ == "__main__":
    main()
