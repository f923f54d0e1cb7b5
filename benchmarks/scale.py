"""Scale: corpora past memory. Preprocessing and a routine on the demo corpus repeated 1x, 10x, 40x (200x).

    python3 benchmarks/scale.py WORKDIR OUT.json [--smoke] [--factors 1 10 40 200] [--workers 1 2] [--png GROWTH.png]
                                [--also EARLIER.json ...]

The demo audio is listed F times in a CSV, each copy under new speaker ids (actor 01, copy 7: speaker 01x007), so
a corpus of F x 1,440 clips (mel 94 x 64) goes through preprocessing_dataset.py --csv like any user's corpus. For
each F: preprocessing's wall time, its peak RSS (wait4: the process and its workers) and the machine's memory in
use at its peak, and the peak of its process tree's summed PSS (/proc/PID/smaps_rollup, sampled every 0.2 s: a
page shared by n processes counts 1/n in each, so the memory-mapped features count once, not once per process
as RSS would; unlike the machine's memory in use, MemTotal - MemAvailable, it does not count other processes);
then a routine of 1 instance x 4 folds x 1 epoch (the example model) with 1 worker and with 2 CPU workers (--workers:
only those): its wall, the same two memory figures, and each fold's time per phase (the fold results' timings).
The features' size is that of the dataset's .npy files. --also: the figures of earlier runs (their OUT.json) join
this run's in the table and the growth curves (a factor measured now replaces its earlier figures, but for the
routines it did not run: `--workers` with no number measures preprocessing alone), so that 200x, measured alone, is
drawn beside 1x to 40x; `--factors` with no factor then only redraws.
"""
import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import common

FACTORS = {False: (1, 10, 40), True: (1, 2)}  # by --smoke
TARGET_PREPROCESSING_GIB_AT_40 = 1.0
ROUTINE = """import xval_instance
xval_instance.run_routine(description="scale", gpu_ID={workers!r}, dataset={dataset!r}, num_experiment={number},
                          num_folds=4, experiment_folder={folder!r}, overwrite_results=False, debug_mode=False,
                          experiment_dict={{1: ['comment_1 = "scale"', 'comment_2 = "1 epoch"', 'num_epochs = 1',
                                               'task_type = "classification"', 'architecture = "EXAMPLE_model"',
                                               'early_stopping = False']}})
"""


def memory_in_use():
    """Bytes of the machine's memory in use: MemTotal - MemAvailable (/proc/meminfo)."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
    return fields["MemTotal"] - fields["MemAvailable"]


def tree(pid):
    """pid and every live descendant of it (from /proc/*/stat's parent ids)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = {pid}, [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier and child not in found]
        found.update(children)
        frontier = children
    return found


def tree_pss(pid):
    """Bytes: the summed proportional set size (/proc/PID/smaps_rollup) of pid and its descendants. A page shared
    by n processes counts 1/n in each, so the memory-mapped features and the libraries count once in all: what
    the process tree holds, whatever else runs on the machine."""
    total = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup", encoding="ascii") as handle:
                total += next(int(line.split()[1]) * 1024 for line in handle if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total


def measured(command, env, log):
    """common.run of command, sampled every 0.2 s: adds 'pss_gib', the peak of its process tree's summed PSS, and
    'memory_gib', the peak of the machine's memory in use minus that just before (other processes count too)."""
    before = memory_in_use()
    result = common.run(command, env, log, sample=lambda pid: (tree_pss(pid), memory_in_use()), period=0.2)
    samples = result.pop("samples")
    return dict(result, pss_gib=max((pss for pss, _ in samples), default=0) / 2**30,
                memory_gib=max(0, max((used for _, used in samples), default=before) - before) / 2**30)


def corpus_csv(ws, folder, factor):
    """A CSV listing the demo corpus factor times under new speaker ids, each copy a folder of hard links (a path
    may not be listed under two foldable items); returns its path and its row count."""
    files = sorted(ws["audio"].glob("Actor_*/*.wav"))
    path = folder / f"scale_{factor}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "speaker"])
        for copy in range(factor):
            for file in files:
                link = folder / "audio" / f"copy{copy:03d}" / file.parent.name / file.name
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(file, link)
                writer.writerow([str(link), file.name.split("-")[2], f"{file.parent.name[-2:]}x{copy:03d}"])
    return path, factor * len(files)


def routine(ws, folder, dataset, workers, number):
    """Run the 1 instance x 4 folds x 1 epoch routine with workers (gpu_ID); its wall, memory and fold timings."""
    script = folder / f"routine_{number}.py"
    script.write_text(ROUTINE.format(workers=workers, dataset=dataset, number=number, folder=str(folder)),
                      encoding="utf-8")
    result = measured([sys.executable, str(script)], common.environment(ws), script.with_suffix(".log"))
    folds = [json.loads(path.read_text(encoding="utf-8"))
             for path in sorted((folder / f"experiment_{number}" / "results" / "folds").glob("*.json"))]
    phases = {name: [fold["timings"][name] for fold in folds] for name in folds[0]["timings"]}
    return {"wall": result["seconds"], "memory_gib": result["memory_gib"], "pss_gib": result["pss_gib"],
            "phases": {name: sum(values) / len(values) for name, values in phases.items()},
            "fold_seconds": sum(fold["seconds"] for fold in folds) / len(folds)}


WORKERS = {1: ("1 worker", -1), 2: ("2 workers", "-1,-1")}  # --workers: the routine's name and gpu_ID


def one_factor(ws, folder, factor, workers=(1, 2)):
    """Preprocess the corpus repeated factor times, then run the routine with each number of CPU workers."""
    folder = folder / f"x{factor}"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh experiment folder: nothing reused from an earlier run
    folder.mkdir(parents=True)
    path, clips = corpus_csv(ws, folder, factor)
    dataset = f"scale_{factor}"
    prep = measured([sys.executable, str(common.REPO / "preprocessing_dataset.py"), "--csv", str(path),
                     "--dataset", dataset, "--force"], common.environment(ws), folder / f"{dataset}_prep.log")
    features = sum(path.stat().st_size for path in ws["features"].glob(f"{dataset}_*.npy")) / 2**30
    runs = {WORKERS[count][0]: routine(ws, folder, dataset, WORKERS[count][1], number)
            for number, count in enumerate(workers, start=1)}
    return {"factor": factor, "clips": clips, "features_gib": features, "preprocessing_seconds": prep["seconds"],
            "preprocessing_peak_rss_gib": prep["peak_mib"] / 1024, "preprocessing_memory_gib": prep["memory_gib"],
            "preprocessing_pss_gib": prep["pss_gib"],
            "routine": runs}


def gib(value):
    """'1.23 GiB', or 'not kept' for a figure an earlier run's JSON (--also) does not hold."""
    return "not kept" if value is None else f"{value:.2f} GiB"


def rows(results):
    """Table rows: per factor, preprocessing and the two routines; then the targets."""
    table = []
    for r in results:
        table.append(common.row(f"{r['factor']}x ({r['clips']:,} clips, features {r['features_gib']:.2f} GiB): "
                                "preprocessing wall / peak RSS / peak PSS of its processes / machine memory in use",
                                f"{r['preprocessing_seconds']:.0f} s / {r['preprocessing_peak_rss_gib']:.2f} GiB / "
                                f"{r['preprocessing_pss_gib']:.2f} GiB / {gib(r.get('preprocessing_memory_gib'))}"))
        for name, run in r["routine"].items():
            phases = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in run["phases"].items())
            table.append(common.row(f"{r['factor']}x routine 1 x 4 folds x 1 epoch, {name}: wall / peak PSS of its "
                                    "processes / machine memory in use / mean fold phases (s)",
                                    f"{run['wall']:.0f} s / {run['pss_gib']:.2f} GiB / {gib(run.get('memory_gib'))} / "
                                    f"{phases}"))
    at = {r["factor"]: r for r in results}
    if 40 in at and "2 workers" in at[40]["routine"]:
        r = at[40]
        memory = r["preprocessing_pss_gib"]
        table.append(common.row("40x: preprocessing peak memory (GiB, PSS of its processes)",
                                f"{memory:.2f}", f"<= {TARGET_PREPROCESSING_GIB_AT_40:g}",
                                memory <= TARGET_PREPROCESSING_GIB_AT_40))
        two = r["routine"]["2 workers"]
        limit = 1.5 * r["features_gib"] + 2
        table.append(common.row("40x: routine with 2 workers, peak PSS of its processes (GiB)", f"{two['pss_gib']:.2f}",
                                f"<= 1.5 x features + 2 = {limit:.2f}", two["pss_gib"] <= limit))
        table.append(common.row("40x: data phase of a fold (s), 2 workers", f"{two['phases']['data']:.2f}", "<= 0.5",
                                two["phases"]["data"] <= 0.5))
    if 200 in at and 40 in at:
        grown = at[200]["preprocessing_pss_gib"] / at[40]["preprocessing_pss_gib"]
        table.append(common.row("200x against 40x: preprocessing peak PSS", f"{grown:.2f}x", "<= 1.10x",
                                grown <= 1.10))
    return table


def plot(results, path):
    """Growth curves: preprocessing peak RSS and the routine's memory in use against the features' size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    size = [r["features_gib"] for r in results]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(size, [r["preprocessing_pss_gib"] for r in results], "o-", label="preprocessing")
    for name, _ in WORKERS.values():
        axes[0].plot(*zip(*[(s, r["routine"][name]["pss_gib"]) for s, r in zip(size, results) if name in r["routine"]]),
                     "^-", label=f"routine, {name}")
    axes[0].plot(size, [1.5 * s + 2 for s in size], ":", color="grey", label="target: 1.5 x features + 2 GiB")
    axes[0].set(xlabel="features (GiB)", ylabel="GiB", title="peak PSS of the process tree")
    axes[1].plot(size, [r["preprocessing_seconds"] for r in results], "o-", label="preprocessing")
    for name, _ in WORKERS.values():
        axes[1].plot(*zip(*[(s, r["routine"][name]["wall"]) for s, r in zip(size, results) if name in r["routine"]]),
                     "^-", label=f"routine, {name}")
    axes[1].set(xlabel="features (GiB)", ylabel="s", title="wall time")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("xval: demo corpus repeated " + ", ".join(f"{r['factor']}x" for r in results))
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="workspace made by benchmarks/run.py")
    parser.add_argument("out", type=Path, help="result JSON: {'rows': [...], 'figures': {...}}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--factors", type=int, nargs="*", help="how many times the corpus is repeated (none: "
                        "only the --also figures)")
    parser.add_argument("--workers", type=int, nargs="*", choices=sorted(WORKERS), default=[1, 2],
                        help="the routine with these numbers of CPU workers (default both; none: preprocessing "
                             "only, the routine's figures of that factor then kept from --also)")
    parser.add_argument("--png", type=Path, help="write the growth curves there")
    parser.add_argument("--also", type=Path, nargs="+", default=[], help="earlier runs' OUT.json to include")
    args = parser.parse_args()
    earlier = {r["factor"]: r for path in args.also
               for r in json.loads(path.read_text(encoding="utf-8"))["figures"]["factors"]}
    ws = common.workspace(args.workdir)
    folder = ws["workdir"] / "scale"
    folder.mkdir(parents=True, exist_ok=True)
    results = [r for factor, r in sorted(earlier.items())]
    for factor in FACTORS[args.smoke] if args.factors is None else args.factors:
        started = time.monotonic()
        measured_now = one_factor(ws, folder, factor, args.workers)
        measured_now["routine"] = {**earlier.get(factor, {}).get("routine", {}), **measured_now["routine"]}
        results = sorted([r for r in results if r["factor"] != factor] + [measured_now], key=lambda r: r["factor"])
        print(f"{factor}x done in {time.monotonic() - started:.0f} s", flush=True)
        common.write_json(args.out, {"rows": rows(results), "figures": {"factors": results}})
    common.write_json(args.out, {"rows": rows(results), "figures": {"factors": results}})
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
