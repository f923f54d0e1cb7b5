"""Parallel folds: xval on one CPU worker against two, and against scikit-learn's cross_validate at each n_jobs.

    python3 benchmarks/parallel.py WORKDIR OUT.json [--smoke]

The example routine's instances 1 and 2 (EXAMPLE_model, two L2 strengths) x 4 actor folds x 5 epochs (early
stopping off) on the demo corpus. Per repetition, in alternating order, six whole processes timed from outside:
the generated routine script with DEVICES -1 (one CPU worker, every core for each fold process) and with -1,-1
(two CPU workers, half the cores each), each into a fresh experiment folder, and the peer a user would pick,
benchmarks/sklearn_peer.py (cross_validate over a scikeras KerasClassifier on the same folds, model, parameters,
normalisation, epochs and batch size) with n_jobs 1 and 2, as a user starts it and again with TensorFlow's oneDNN
kernels on, as xval's fold processes have them (TF_ENABLE_ONEDNN_OPTS=1; TensorFlow turns them on by itself only
on recent Intel CPUs), so that what that setting alone gains shows as such. What the runs did comes from xval's
records: the launch record (devices, threads_per_fold, each fold's wall time seen by the routine) and each fold
result ("seconds", "timings", "threads", "started_at", "finished_at"), from which the number of folds running at
once is read.
"""
import json
import statistics
import sys
from importlib import metadata

import common
import overhead

FULL = {"instances": (1, 2), "folds": 4, "epochs": 5, "reps": 3}
SMOKE = {"instances": (1,), "folds": 2, "epochs": 1, "reps": 1}
TARGET_SPEEDUP = 1.25
TARGET_RATIO = {"one": 0.95, "two": 0.75}  # xval / the peer as a user starts it (issue 24)
XVAL = {"one": "-1", "two": "-1,-1"}  # DEVICES on the routine's command line
ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "1"}
PEER = {"peer1": (1, {}), "peer2": (2, {}), "peer1_onednn": (1, ONEDNN), "peer2_onednn": (2, ONEDNN)}  # n_jobs, env
KINDS = ("one", "two", *PEER)


def run_xval(ws, folder, instances, number, folds, devices):
    """The generated routine (overhead.ROUTINE) of `instances` run as `routine.py FIRST LAST DEVICES` into
    folder/experiment_{number}; its wall time, launch record, fold results, folder and number."""
    script = folder / f"routine_{number}.py"
    script.write_text(overhead.ROUTINE.format(dataset=common.DATASET, number=number, folds=folds, folder=str(folder),
                                              instances=instances), encoding="utf-8")
    command = [sys.executable, str(script), str(min(instances)), str(max(instances)), devices]
    measured = common.run(command, common.environment(ws), script.with_suffix(".log"))
    experiment = folder / f"experiment_{number}"
    launch = json.loads(sorted((experiment / "logs").glob("launch_*.json"))[-1].read_text(encoding="utf-8"))
    results = [json.loads(path.read_text(encoding="utf-8"))
               for path in sorted((experiment / "results" / "folds").glob("*.json"))]
    expected = [int(device) for device in devices.split(",")]
    if launch["devices"] != expected or len(results) != len(instances) * folds or \
            any(result["threads"] != launch["threads_per_fold"] for result in results):
        raise RuntimeError(f"{script.name} {devices}: devices {launch['devices']}, {len(results)} fold results, "
                           f"threads {[result['threads'] for result in results]} (see {experiment})")
    return {"wall": measured["seconds"], "launch": launch, "folds": results, "folder": experiment, "number": number}


def run_peer(ws, job, kind):
    """sklearn_peer.py as a process with the kind's n_jobs and environment: its wall time and the fit and score
    times cross_validate saw."""
    n_jobs, variables = PEER[kind]
    out = job.with_name(f"{kind}_out.json")
    measured = common.run([sys.executable, str(common.BENCHMARKS / "sklearn_peer.py"), str(job), str(out),
                           "--n-jobs", str(n_jobs)],
                          dict(common.environment(ws), KERAS_BACKEND="tensorflow", **variables),
                          job.with_name(f"{kind}.log"))
    result = json.loads(out.read_text(encoding="utf-8"))
    return {"wall": measured["seconds"], "fit": result["fit"], "score": result["score"],
            "test_scores": result["test_scores"]}


def concurrency(run):
    """Fold processes running at once on average: the folds' own seconds summed over the span from the first
    fold's start to the last one's end (Unix times in the fold results)."""
    span = max(f["finished_at"] for f in run["folds"]) - min(f["started_at"] for f in run["folds"])
    return sum(f["seconds"] for f in run["folds"]) / span if span > 0 else 0.0


def measure(ws, folder, size):
    """Interleaved repetitions (the order reversed every other one): {kind: [runs]}; the peer's job is written
    from the first xval run's folds.json and instance results (overhead.plain_job)."""
    instances, job, number = overhead.example_instances(size["instances"], size["epochs"]), None, 0
    runs = {kind: [] for kind in KINDS}
    for rep in range(size["reps"]):
        for kind in KINDS[::1 if rep % 2 == 0 else -1]:
            if kind in XVAL:
                number += 1
                runs[kind].append(run_xval(ws, folder, instances, number, size["folds"], XVAL[kind]))
                job = job or overhead.plain_job(ws, runs[kind][-1], size["instances"])
            else:
                runs[kind].append(run_peer(ws, job, kind))
    return runs


def main():
    """Measure, then the table rows: walls, the speed-up of two workers, the peer's walls and the ratios."""
    args, ws, folder = common.start("parallel", __doc__.splitlines()[0])
    size = SMOKE if args.smoke else FULL
    runs = measure(ws, folder, size)
    wall = {kind: common.spread([run["wall"] for run in kind_runs]) for kind, kind_runs in runs.items()}
    median = {kind: stats["median"] for kind, stats in wall.items()}
    speedups = [one["wall"] / two["wall"] for one, two in zip(runs["one"], runs["two"])]
    speedup = median["one"] / median["two"]
    peer_speedup = median["peer1"] / median["peer2"]
    ratio = {"one": median["one"] / median["peer1"], "two": median["two"] / median["peer2"],
             "one_onednn": median["one"] / median["peer1_onednn"], "two_onednn": median["two"] / median["peer2_onednn"]}
    threads = {kind: runs[kind][0]["launch"]["threads_per_fold"] for kind in XVAL}
    fit = {kind: statistics.median([sum(f["timings"]["fit"] for f in run["folds"]) for run in runs[kind]])
           for kind in XVAL}
    fold_seconds = {kind: statistics.median([statistics.mean(f["seconds"] for f in run["folds"]) for run in runs[kind]])
                    for kind in XVAL}
    at_once = statistics.median([concurrency(run) for run in runs["two"]])
    peer_fit = {kind: statistics.median([run["fit"] for run in runs[kind]]) for kind in PEER}
    folds = len(size["instances"]) * size["folds"]
    rows = [common.row(f"{len(size['instances'])} instances x {size['folds']} folds x {size['epochs']} epochs, demo "
                       f"corpus; {size['reps']} interleaved repetitions: median (min to max, n)", ""),
            common.row(f"xval, 1 CPU worker (-1; {threads['one']} threads per fold), whole routine",
                       common.show(wall["one"])),
            common.row(f"xval, 2 CPU workers (-1,-1; {threads['two']} thread(s) per fold), whole routine",
                       common.show(wall["two"])),
            common.row("speed-up of 2 workers: 1 worker / 2 workers",
                       f"{speedup:.2f} (repetitions {min(speedups):.2f} to {max(speedups):.2f})",
                       f">= {TARGET_SPEEDUP}", speedup >= TARGET_SPEEDUP),
            common.row("  fold processes running at once, 2 workers (summed fold seconds / span of the folds)",
                       f"{at_once:.2f}"),
            common.row("  mean fold process (s): 1 worker / 2 workers",
                       f"{fold_seconds['one']:.2f} / {fold_seconds['two']:.2f}"),
            common.row(f"  model.fit summed over the {folds} folds (s): 1 worker / 2 workers",
                       f"{fit['one']:.2f} / {fit['two']:.2f}"),
            common.row("peer: scikit-learn cross_validate over scikeras KerasClassifier, n_jobs=1, whole process",
                       common.show(wall["peer1"])),
            common.row("peer: the same, n_jobs=2 (loky workers)", common.show(wall["peer2"])),
            common.row("  peer speed-up: n_jobs=1 / n_jobs=2", f"{peer_speedup:.2f}"),
            common.row(f"  peer fit_time summed over the {folds} folds (s): n_jobs=1 / n_jobs=2",
                       f"{peer_fit['peer1']:.2f} / {peer_fit['peer2']:.2f}"),
            common.row("peer with TF_ENABLE_ONEDNN_OPTS=1, n_jobs=1 / n_jobs=2",
                       f"{common.show(wall['peer1_onednn'])} / {common.show(wall['peer2_onednn'])}"),
            common.row(f"  peer with oneDNN, fit_time summed over the {folds} folds (s): n_jobs=1 / n_jobs=2",
                       f"{peer_fit['peer1_onednn']:.2f} / {peer_fit['peer2_onednn']:.2f}"),
            common.row("ratio xval / peer, 1 worker vs n_jobs=1", f"{ratio['one']:.3f}",
                       f"<= {TARGET_RATIO['one']:g}", ratio["one"] <= TARGET_RATIO["one"]),
            common.row("ratio xval / peer, 2 workers vs n_jobs=2", f"{ratio['two']:.3f}",
                       f"<= {TARGET_RATIO['two']:g}", ratio["two"] <= TARGET_RATIO["two"]),
            common.row("  against the peer with oneDNN: 1 worker / 2 workers",
                       f"{ratio['one_onednn']:.3f} / {ratio['two_onednn']:.3f}")]
    versions = {name: metadata.version(name) for name in ("scikeras", "scikit-learn", "joblib")}
    common.write_json(args.out, {"rows": rows, "peer_versions": versions, "figures": {
        "wall": median, "speedup": speedup, "speedups": speedups, "peer_speedup": peer_speedup, "ratio": ratio,
        "walls": {kind: [run["wall"] for run in kind_runs] for kind, kind_runs in runs.items()},
        "threads_per_fold": threads, "fit": fit, "fold_seconds": fold_seconds, "folds_at_once": at_once,
        "peer_fit": peer_fit, "folds": folds,
        "peer_test_scores": runs["peer1"][0]["test_scores"],
        "xval_test_scores": [[f["metrics"]["test"].get("balanced_accuracy") for f in run["folds"]]
                             for run in runs["one"][:1]]}})


if __name__ == "__main__":
    main()
