"""Overhead: a routine run through xval against the same fits in plain Keras.

    python3 benchmarks/overhead.py WORKDIR OUT.json [--smoke] [--backend tensorflow|jax|torch] [--epochs N]
                                   [--reps N]

The example routine's instances 1 and 2 (EXAMPLE_model, two L2 strengths) x 4 actor folds x 5 epochs (early
stopping off) on the demo corpus; per repetition, in alternating order, three whole processes timed from outside:
a generated routine script into a fresh experiment, benchmarks/plain_keras.py (the same models, folds, epochs and
seed in one process), and plain_keras.py --evaluate (which also predicts and scores every split). The sum of the
fits and where the rest of the routine's time goes come from xval's own records: the launch record
(logs/launch_*.json: phases, and each fold's wall time seen by the routine) and each fold result ("seconds",
"timings"). --backend jax (or torch): the instances get `backend = "jax"` and plain Keras runs with
KERAS_BACKEND=jax, so the fixed cost per fold is that of a fold on that backend (issue 24: JAX's, whose target is
its own). --epochs and --reps change the sizes: the fixed cost per fold hardly depends on the epochs, so
`--backend jax --epochs 2 --reps 3` measures JAX's in about 14 minutes on 2 cores (plain Keras on JAX takes longer
than the routine).
"""
import ast
import json
import statistics
import sys

import common

FULL = {"instances": (1, 2), "folds": 4, "epochs": 5, "reps": 5}
SMOKE = {"instances": (1,), "folds": 2, "epochs": 1, "reps": 1}
TARGET_RATIO = 1.10
TARGET_FIXED = {"tensorflow": 3.0, "torch": 3.0, "jax": 1.5}  # seconds per fold, by backend (JAX's: issue 24)
PHASES = ("validate", "setup", "spreadsheet", "close_server")  # the launch record's, besides "total"
ROUTINE = """import xval_instance
xval_instance.run_routine(description="benchmark", gpu_ID=-1, dataset={dataset!r}, num_experiment={number},
                          num_folds={folds}, experiment_folder={folder!r}, overwrite_results=False, debug_mode=False,
                          experiment_dict={instances!r})
"""


def example_instances(ids, epochs, backend="tensorflow"):
    """The example routine's instances `ids` (read from its source), with early stopping off and `epochs` epochs, on
    the Keras backend given."""
    tree = ast.parse((common.REPO / "xval_routine_example.py").read_text(encoding="utf-8"))
    found = {ast.literal_eval(node.targets[0].slice): ast.literal_eval(node.value) for node in tree.body
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)}
    return {i: [text for text in found[i] if text.split("=")[0].strip() not in ("early_stopping", "num_epochs",
                                                                                 "patience")]
            + ["early_stopping = False", f"num_epochs = {epochs}", f'backend = "{backend}"'] for i in ids}


def run_routine(ws, folder, instances, number, folds, repo=common.REPO, sample=None):
    """Run a generated routine (of the project in repo) into folder/experiment_{number}; returns its wall time,
    launch record, fold results (in fold order), experiment folder and samples (see common.run)."""
    script = folder / f"routine_{number}.py"
    script.write_text(ROUTINE.format(dataset=common.DATASET, number=number, folds=folds, folder=str(folder),
                                     instances=instances), encoding="utf-8")
    measured = common.run([sys.executable, str(script)], common.environment(ws, repo), script.with_suffix(".log"),
                          sample)
    experiment = folder / f"experiment_{number}"
    launch = json.loads(sorted((experiment / "logs").glob("launch_*.json"))[-1].read_text(encoding="utf-8"))
    results = [json.loads(path.read_text(encoding="utf-8"))
               for path in sorted((experiment / "results" / "folds").glob("*.json"))]
    return {"wall": measured["seconds"], "launch": launch, "folds": results, "folder": experiment,
            "number": number, "samples": measured["samples"]}


def plain_job(ws, run, ids):
    """plain_keras.py's job, next to the experiment: its folds and the instances' resolved parameters."""
    folder = run["folder"]
    results = [json.loads((folder / "results" / f"results_{common.DATASET}_exp{run['number']}_run{i}.json")
                          .read_text(encoding="utf-8")) for i in ids]
    job = {"features_folder": str(ws["features"]), "dataset": common.DATASET,
           "folds": json.loads((folder / "folds.json").read_text(encoding="utf-8"))["folds"],
           "instances": [result["parameters"] for result in results]}
    common.write_json(folder.parent / "plain_job.json", job)
    return folder.parent / "plain_job.json"


def run_plain(ws, job, flags=(), backend="tensorflow"):
    """plain_keras.py as a process on the Keras backend given (its output next to the job): its wall time and its
    summed fit."""
    out = job.with_name("plain_out.json")
    measured = common.run([sys.executable, str(common.BENCHMARKS / "plain_keras.py"), str(job), str(out), *flags],
                          dict(common.environment(ws), KERAS_BACKEND=backend), job.with_name("plain.log"))
    return {"wall": measured["seconds"], "fit": json.loads(out.read_text(encoding="utf-8"))["fit"]}


def breakdown(run):
    """Where one routine run's seconds went, {part: seconds}; the parts add up to its wall time."""
    phases, fold_runs, folds = run["launch"]["phases"], run["launch"]["fold_runs"], run["folds"]
    parts = {"routine process: interpreter, imports, final summary, exit": run["wall"] - phases["total"]}
    parts.update({f"routine: {name}": phases.get(name, 0.0) for name in PHASES})
    fold_walls = sum(f["seconds"] for f in fold_runs)
    parts["routine: locks, instance files, console"] = phases["total"] - sum(parts[f"routine: {name}"]
                                                                             for name in PHASES) - fold_walls
    parts["fold process start, fork, IPC (fold wall seen by the routine - its own seconds)"] = \
        fold_walls - sum(f["seconds"] for f in folds)
    for name in folds[0]["timings"]:  # data, build, fit, save, evaluate
        parts[f"fold: {name}"] = sum(f["timings"].get(name, 0.0) for f in folds)
    parts["fold: rest (imports, seed)"] = sum(f["seconds"] - sum(f["timings"].values()) for f in folds)
    return parts


def measure(ws, folder, size, backend):
    """Interleaved repetitions (the order reversed every other one): {'xval', 'plain', 'eval': [runs]}."""
    instances, job = example_instances(size["instances"], size["epochs"], backend), None
    runs = {"xval": [], "plain": [], "eval": []}
    for rep in range(size["reps"]):
        for kind in ("xval", "plain", "eval")[::1 if rep % 2 == 0 else -1]:
            if kind == "xval":
                runs[kind].append(run_routine(ws, folder, instances, rep + 1, size["folds"]))
                job = job or plain_job(ws, runs[kind][0], size["instances"])
            else:
                runs[kind].append(run_plain(ws, job, ["--evaluate"] if kind == "eval" else [], backend))
    return runs


def backends_run(runs):
    """The Keras backends the routines' instances ran on, sorted: read from their results files' parameters."""
    return sorted({json.loads(path.read_text(encoding="utf-8"))["parameters"]["backend"] for run in runs
                   for path in (run["folder"] / "results").glob("results_*_run*.json")})


def main():
    """Measure, then the table rows: walls, ratios, the fixed cost per fold and its parts."""
    args, ws, folder = common.start("overhead", __doc__.splitlines()[0], [
        (("--backend",), {"choices": tuple(TARGET_FIXED), "default": "tensorflow",
                          "help": "the instances' Keras backend"}),
        (("--epochs",), {"type": int, "help": f"epochs a fold (default {FULL['epochs']})"}),
        (("--reps",), {"type": int, "help": f"interleaved repetitions (default {FULL['reps']})"})])
    size = dict(SMOKE if args.smoke else FULL)
    size.update({name: getattr(args, name) for name in ("epochs", "reps") if getattr(args, name) is not None})
    target_fixed = TARGET_FIXED[args.backend]
    folds, runs = len(size["instances"]) * size["folds"], measure(ws, folder, size, args.backend)
    wall = {kind: common.spread([run["wall"] for run in kind_runs]) for kind, kind_runs in runs.items()}
    ratios = [x["wall"] / p["wall"] for x, p in zip(runs["xval"], runs["plain"])]
    ratio = wall["xval"]["median"] / wall["plain"]["median"]
    parts = [breakdown(run) for run in runs["xval"]]
    per_fold = {name: statistics.median([p[name] for p in parts]) / folds for name in parts[0]}
    fixed = statistics.median([(r["wall"] - p["fold: fit"]) / folds for r, p in zip(runs["xval"], parts)])
    plain_fit = statistics.median([run["fit"] for run in runs["plain"]])
    first_wait = statistics.median([r["launch"]["fold_runs"][0]["seconds"] - r["folds"][0]["seconds"]
                                    for r in runs["xval"]])
    rows = [common.row(f"{len(size['instances'])} instances x {size['folds']} folds x {size['epochs']} epochs, demo "
                       f"corpus, {args.backend}; {size['reps']} interleaved repetitions: median (min to max, n)", ""),
            common.row("xval routine, whole process", common.show(wall["xval"])),
            common.row("plain Keras fits, one process", common.show(wall["plain"])),
            common.row("ratio xval / plain", f"{ratio:.3f} (repetitions {min(ratios):.3f} to {max(ratios):.3f})",
                       f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO),
            common.row("plain Keras that also predicts and scores every split; ratio xval / it",
                       f"{common.show(wall['eval'])}; {wall['xval']['median'] / wall['eval']['median']:.3f}"),
            common.row("model.fit summed over the folds: xval / plain (s)",
                       f"{per_fold['fold: fit'] * folds:.2f} / {plain_fit:.2f}"),
            common.row("fixed cost per fold: (xval wall - fit) / folds (s)", f"{fixed:.2f}", f"<= {target_fixed:g}",
                       fixed <= target_fixed),
            common.row("  of which, per fold (s):", "")]
    rows += [common.row(f"    {name}", f"{seconds:.3f}") for name, seconds in per_fold.items() if name != "fold: fit"]
    rows.append(common.row("    (the first fold's start, waiting for the fold server's imports, per run)",
                           f"{first_wait:.2f}"))
    common.write_json(args.out, {"rows": rows, "figures": {
        "wall": {kind: stats["median"] for kind, stats in wall.items()}, "ratio": ratio, "fixed_per_fold": fixed,
        "walls": {kind: [run["wall"] for run in kind_runs] for kind, kind_runs in runs.items()},
        "plain_fit": plain_fit, "folds": folds, "per_fold": per_fold, "first_fold_wait": first_wait,
        "backends": backends_run(runs["xval"])}})


if __name__ == "__main__":
    main()
