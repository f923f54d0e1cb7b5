"""Benchmark 1: the framework overhead of xval against the same fits written with plain Keras.

    python3 benchmarks/overhead.py [--smoke] [--reps N] [--workdir DIR] [--json-out PATH]

Full size: the example routine's model (xval_routine_example.py, instances 1 and 2: EXAMPLE_model with two L2
strengths) × 4 actor folds × 5 epochs (early_stopping off, so every fold runs exactly 5) on the demo corpus
(24 actors × 60 clips, log-mel per config.ini). Each repetition runs, in alternating order:
  xval        a generated routine script as a real process (python3 routine.py), into a fresh experiment;
  plain       benchmarks/plain_keras.py: the same fits (same model, normalisation, data, folds from the
              experiment's folds.json, epochs, batch size, seed) in one process with plain Keras;
  plain_eval  the same, each fold's model also predicting and scoring its train, validation and test clips (what
              xval reports; a second reference, for information).
All are timed from outside as whole processes; the medians over repetitions give the ratios (the target is on
xval / plain). The xval process
runs with benchmarks/tracehook on its PYTHONPATH, which times every phase of the routine, the fold server and
the fold processes; from that trace come the pure fit time (keras.Model.fit) and the breakdown of the fixed
cost. Tracing adds about 20 us per traced call, well under 0.1 s per run.
"""
import ast
import json
import shutil
import sys
from pathlib import Path

import common

EXAMPLE_ROUTINE = common.REPO / "xval_routine_example.py"
FULL = {"instances": (1, 2), "num_folds": 4, "epochs": 5, "reps": 5, "warm_up": True}
SMOKE = {"instances": (1,), "num_folds": 2, "epochs": 1, "reps": 1, "warm_up": False}
BENCHMARK_OVERRIDES = ("early_stopping", "num_epochs", "patience")  # replaced in the example's strings
TARGET_FIXED_SECONDS_PER_FOLD = 3.0
TARGET_RATIO = 1.10
ROUTINE_TEMPLATE = """import xval_instance
description = {description!r}
gpu_ID = -1
dataset = {dataset!r}
num_experiment = {num_experiment!r}
num_folds = {num_folds!r}
experiment_folder = {experiment_folder!r}
overwrite_results = False
debug_mode = False
experiment_dict = {experiment_dict!r}
xval_instance.run_routine(description=description, gpu_ID=gpu_ID, dataset=dataset,
                          num_experiment=num_experiment, num_folds=num_folds, experiment_folder=experiment_folder,
                          overwrite_results=overwrite_results, debug_mode=debug_mode,
                          experiment_dict=experiment_dict)
"""
# The rows of the breakdown, in order: (key, label, once per run or per fold).
BREAKDOWN_ROWS = (
    ("parent_interpreter", "routine process: interpreter start", "once"),
    ("parent_imports", "routine process: imports (xval_instance, numpy)", "once"),
    ("validation", "validation (prepare): start the fold server, import results_to_excel and scikit-learn, "
                   "config, parameters, dataset load + check, folds", "once"),
    ("experiment_setup", "experiment setup: folds.json, description, code snapshot (git)", "once"),
    ("server_interpreter", "fold server: exec + interpreter start", "once"),
    ("server_imports", "fold server: imports (TensorFlow, Keras, define_models) not hidden behind the routine's "
                       "own start", "once"),
    ("server_dataset", "fold server: dataset load (first fold) and reuse checks", "per fold"),
    ("fork", "fork of the fold process", "per fold"),
    ("child_start", "fold process start (job JSON, death signal)", "per fold"),
    ("fold_data", "fold: check dataset, stack arrays, normalisation statistics", "per fold"),
    ("build", "fold: build model (define_models + Normalization)", "per fold"),
    ("compile", "fold: compile", "per fold"),
    ("fit", "fold: keras.Model.fit (the pure fit: every epoch, incl. tf.function tracing)", "per fold"),
    ("fold_other", "fold: seed, callbacks, best weights, history", "per fold"),
    ("save", "fold: save .hdf5 (atomic, fsync)", "per fold"),
    ("predict_metrics", "fold: predict train/val/test + scikit-learn metrics", "per fold"),
    ("result_json", "fold: write fold result JSON (atomic)", "per fold"),
    ("child_exit", "fold process exit (flush, teardown, reaped by server)", "per fold"),
    ("ipc", "server -> routine: job line, exit line, log writes", "per fold"),
    ("instance_bookkeeping", "routine: locks, parameters file, instance JSON writes", "per fold"),
    ("spreadsheet", "routine: spreadsheet rebuild after each instance", "per fold"),
    ("server_shutdown", "routine: stop the fold server (waits for its exit)", "once"),
    ("parent_exit", "routine process: exit (interpreter teardown)", "once"),
)


# ----------------------------------------------------------------------------------------------------------------
# The routine and the plain job

def example_instances(instance_ids, routine_path=EXAMPLE_ROUTINE):
    """{id: parameter strings} of the example routine's instances, read from its source (never executed)."""
    tree = ast.parse(Path(routine_path).read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript)
                and isinstance(node.targets[0].value, ast.Name) and node.targets[0].value.id == "experiment_dict"):
            found[ast.literal_eval(node.targets[0].slice)] = ast.literal_eval(node.value)
    missing = [instance for instance in instance_ids if instance not in found]
    if missing:
        raise RuntimeError(f"{routine_path} defines no experiment_dict[{missing[0]}]")
    return {instance: found[instance] for instance in instance_ids}


def benchmark_instances(instance_ids, epochs):
    """The example's instances with exactly `epochs` epochs: early stopping off, num_epochs set."""
    instances = {}
    for instance, strings in example_instances(instance_ids).items():
        kept = [text for text in strings if text.split("=")[0].strip() not in BENCHMARK_OVERRIDES]
        instances[instance] = kept + ["early_stopping = False", f"num_epochs = {epochs}"]
    return instances


def write_routine(folder, experiment_dict, num_experiment, num_folds, experiment_folder, dataset=common.DATASET):
    """A routine script like xval_routine_example.py in folder; returns its path."""
    path = Path(folder) / f"xval_routine_bench{num_experiment}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ROUTINE_TEMPLATE.format(
        description="benchmark: framework overhead", dataset=dataset, num_experiment=num_experiment,
        num_folds=num_folds, experiment_folder=str(experiment_folder), experiment_dict=experiment_dict),
        encoding="utf-8")
    return path


def write_plain_job(path, workspace, experiment_dir, instance_ids):
    """The plain script's job: features, the experiment's folds and the instances' resolved parameters."""
    folds = json.loads((experiment_dir / "folds.json").read_text(encoding="utf-8"))["folds"]
    experiment = int(experiment_dir.name.split("_")[-1])
    instances = []
    for instance in instance_ids:
        result_path = experiment_dir / "results" / f"results_{workspace['dataset']}_exp{experiment}_run{instance}.json"
        instances.append(json.loads(result_path.read_text(encoding="utf-8"))["parameters"])
    common.write_json(path, {"features_folder": str(workspace["features_folder"]), "dataset": workspace["dataset"],
                             "folds": folds, "instances": instances})
    return path


# ----------------------------------------------------------------------------------------------------------------
# Runs

def run_xval(folder, workspace, experiment_dict, num_experiment, num_folds):
    """One traced xval routine process into a fresh experiment; returns its timing and trace records."""
    experiments = folder / "experiments"
    routine = write_routine(folder, experiment_dict, num_experiment, num_folds, experiments)
    trace = folder / f"trace_exp{num_experiment}.jsonl"
    trace.unlink(missing_ok=True)
    log = folder / f"xval_exp{num_experiment}.log"
    before = common.cpu_counters()
    result = common.run_timed([sys.executable, str(routine)],
                              common.project_environment(workspace["config_path"], trace), folder, log)
    result["other_load"] = common.foreign_load(before, common.cpu_counters())
    common.check_returncode(result, f"the xval routine {routine.name}", log)
    result["experiment_dir"] = experiments / f"experiment_{num_experiment}"
    result["trace"] = common.read_trace(trace)
    return result


def run_plain(folder, workspace, job_path, repetition, with_evaluation=False):
    """One plain-Keras process (with_evaluation: it also predicts and scores every split); returns its timing and
    its own phase times."""
    name = f"plain{'_eval' if with_evaluation else ''}_rep{repetition}"
    out, log = folder / f"{name}.json", folder / f"{name}.log"
    command = [sys.executable, str(common.BENCHMARKS_DIR / "plain_keras.py"), str(job_path), str(out)]
    before = common.cpu_counters()
    result = common.run_timed(command + (["--evaluate"] if with_evaluation else []),
                              common.project_environment(workspace["config_path"]), folder, log)
    result["other_load"] = common.foreign_load(before, common.cpu_counters())
    common.check_returncode(result, "the plain Keras script", log)
    result["phases"] = json.loads(out.read_text(encoding="utf-8"))
    return result


# ----------------------------------------------------------------------------------------------------------------
# The trace: where the time of one xval run goes

def spans(records, name, pid=None):
    """Timed calls of name (in pid, when given), in start order."""
    return sorted((r for r in records if r["name"] == name and "t0" in r and (pid is None or r["pid"] == pid)),
                  key=lambda r: r["t0"])


def moment(records, name, pid):
    """The time of the first moment record of name in pid (None if there is none)."""
    times = [r["t"] for r in records if r["name"] == name and r["pid"] == pid and "t" in r]
    return min(times) if times else None


def duration(records, name, pid=None, within=None):
    """Total seconds of the timed calls of name (in pid; started within the (t0, t1) interval, when given)."""
    total = 0.0
    for span in spans(records, name, pid):
        if within is None or within[0] <= span["t0"] <= within[1]:
            total += span["t1"] - span["t0"]
    return total


def fold_breakdown(records, run, child_pid):
    """Seconds of each part of one fold, from the routine's view of it (one FoldRunner.run call)."""
    child = [r for r in records if r["pid"] == child_pid]
    run_fold = spans(child, "fold.run_fold")[0]
    forked = moment(child, "child.forked", child_pid)
    exited = moment(child, "process.exit", child_pid) or run_fold["t1"]
    fork_span = next(r for r in records if r["name"] == "server.fork" and r.get("child") == child_pid)
    reaped = next(r for r in records if r["name"] == "server.waitpid" and r.get("child") == child_pid)["t1"]
    server_pid = fork_span["pid"]
    load = [span for span in spans(records, "fold.load_for_children", server_pid)
            if run["t0"] <= span["t0"] <= fork_span["t0"]]
    parts = {key: 0.0 for key, _, _ in BREAKDOWN_ROWS}
    start = [span for span in spans(records, "xval.FoldRunner.start") if run["t0"] <= span["t0"] <= run["t1"]]
    server_loads = spans(records, "fold.load_for_children", server_pid)
    if start and load:  # the server was (re)started by this fold: the fold waited for all of its start
        server_start = moment(records, "process.start", server_pid)
        parts["server_interpreter"] = server_start - start[0]["t0"]
        parts["server_imports"] = load[0]["t0"] - server_start
    elif load and server_loads[0] is load[0]:  # started before validation: the fold waited for what was left
        parts["server_imports"] = load[0]["t0"] - run["t0"]
    parts["server_dataset"] = sum(span["t1"] - span["t0"] for span in load)
    parts["fork"] = forked - (load[-1]["t1"] if load else fork_span["t0"])
    parts["child_start"] = run_fold["t0"] - forked
    inside = (run_fold["t0"], run_fold["t1"])
    parts["fold_data"] = sum(duration(child, name, within=inside) for name in (
        "fold.load_dataset", "fold.stack_items", "fold.normalisation_statistics"))
    parts["build"] = duration(child, "fold.build_model", within=inside)
    parts["compile"] = duration(child, "keras.compile", within=inside)
    parts["fit"] = duration(child, "keras.fit", within=inside)
    parts["save"] = duration(child, "keras.save", within=inside) + duration(child, "fold.commit_temp_file",
                                                                           within=inside)
    parts["predict_metrics"] = duration(child, "fold.predict_and_score", within=inside)
    parts["result_json"] = duration(child, "fold.atomic_write_json", within=inside)
    named = ("fold_data", "build", "compile", "fit", "save", "predict_metrics", "result_json")
    parts["fold_other"] = (run_fold["t1"] - run_fold["t0"]) - sum(parts[key] for key in named)
    parts["child_exit"] = (exited - run_fold["t1"]) + (reaped - exited)
    accounted = sum(parts.values())
    parts["ipc"] = (run["t1"] - run["t0"]) - accounted
    return parts


def analyse_trace(records, started, ended):
    """Breakdown of one traced xval run: {key: seconds} over BREAKDOWN_ROWS, plus wall, fit and unattributed.

    started, ended: monotonic times just before the routine process started and just after it ended.
    """
    launch = spans(records, "xval.launch")[0]
    parent = launch["pid"]
    parts = {key: 0.0 for key, _, _ in BREAKDOWN_ROWS}
    parts["parent_interpreter"] = moment(records, "process.start", parent) - started
    parts["parent_imports"] = launch["t0"] - moment(records, "process.start", parent)
    prepare = spans(records, "xval.prepare", parent)[0]
    parts["validation"] = prepare["t1"] - prepare["t0"]
    instances = spans(records, "xval.run_instance", parent)
    parts["experiment_setup"] = instances[0]["t0"] - prepare["t1"]
    forks = sorted((r for r in records if r["name"] == "child.forked"), key=lambda r: r["t"])
    children = [r["pid"] for r in forks]
    runs = spans(records, "xval.FoldRunner.run", parent)
    if len(runs) != len(children):
        raise RuntimeError(f"trace holds {len(runs)} fold runs but {len(children)} fold processes")
    for run, child_pid in zip(runs, children, strict=True):
        for key, seconds in fold_breakdown(records, run, child_pid).items():
            parts[key] += seconds
    parts["spreadsheet"] = duration(records, "xval.rebuild_spreadsheet", parent)  # after each instance
    for instance in instances:
        inside = (instance["t0"], instance["t1"])
        spreadsheet = duration(records, "xval.rebuild_spreadsheet", parent, inside)
        fold_runs = duration(records, "xval.FoldRunner.run", parent, inside)
        parts["instance_bookkeeping"] += (instance["t1"] - instance["t0"]) - spreadsheet - fold_runs
    parts["server_shutdown"] = duration(records, "xval.FoldRunner.close", parent)
    parts["parent_exit"] = ended - launch["t1"]
    wall = ended - started
    early_start = [span for span in spans(records, "xval.FoldRunner.start", parent) if span["t0"] < runs[0]["t0"]]
    # the server's lead over the first fold: all of it overlapped the import unless the server was ready sooner
    hidden = runs[0]["t0"] - early_start[0]["t0"] if early_start else 0.0
    return {"parts": parts, "wall": wall, "fit": parts["fit"], "folds": len(runs),
            "unattributed": wall - sum(parts.values()), "server_start_hidden": hidden}


# ----------------------------------------------------------------------------------------------------------------
# Summary

def summarise(xval_runs, plain_runs, plain_eval_runs, num_folds_total):
    """Medians over repetitions: ratios, fixed cost per fold, and the breakdown (median of each part)."""
    analyses = [analyse_trace(run["trace"], run["started"], run["ended"]) for run in xval_runs]
    xval_wall = common.median([run["seconds"] for run in xval_runs])
    plain_wall = common.median([run["seconds"] for run in plain_runs])
    plain_eval_wall = common.median([run["seconds"] for run in plain_eval_runs])
    xval_fit = common.median([analysis["fit"] for analysis in analyses])
    plain_fit = common.median([run["phases"]["fit_total"] for run in plain_runs])
    fixed = [(analysis["wall"] - analysis["fit"]) / num_folds_total for analysis in analyses]
    breakdown = []
    for key, label, frequency in BREAKDOWN_ROWS:
        total = common.median([analysis["parts"][key] for analysis in analyses])
        breakdown.append({"key": key, "part": label, "kind": frequency, "seconds_total": round(total, 3),
                          "seconds_per_fold": round(total / num_folds_total, 3)})
    unattributed = common.median([analysis["unattributed"] for analysis in analyses])
    plain_phases = [run["phases"] for run in plain_runs]
    plain_fixed = [(run["seconds"] - run["phases"]["fit_total"]) / num_folds_total for run in plain_runs]
    return {
        "folds_total": num_folds_total,
        "xval_wall_seconds": round(xval_wall, 3), "plain_wall_seconds": round(plain_wall, 3),
        "wall_ratio": round(xval_wall / plain_wall, 4),
        "wall_ratio_per_repetition": [round(x["seconds"] / p["seconds"], 4)
                                      for x, p in zip(xval_runs, plain_runs, strict=True)],
        "plain_evaluating_wall_seconds": round(plain_eval_wall, 3),
        "wall_ratio_vs_plain_evaluating": round(xval_wall / plain_eval_wall, 4),
        "plain_evaluate_per_fold": round(common.median(
            [sum(f["evaluate"] for f in run["phases"]["folds"]) / num_folds_total for run in plain_eval_runs]), 3),
        "xval_fit_seconds": round(xval_fit, 3), "plain_fit_seconds": round(plain_fit, 3),
        "xval_fit_per_repetition": [round(analysis["fit"], 3) for analysis in analyses],
        "plain_fit_per_repetition": [round(run["phases"]["fit_total"], 3) for run in plain_runs],
        "fixed_seconds_per_fold": round(common.median(fixed), 3),
        "plain_fixed_seconds_per_fold": round(common.median(plain_fixed), 3),
        "extra_seconds_per_fold_vs_plain": round((xval_wall - plain_wall) / num_folds_total, 3),
        "breakdown": breakdown, "unattributed_seconds": round(unattributed, 3),
        "server_start_hidden_seconds": round(common.median([a["server_start_hidden"] for a in analyses]), 3),
        "plain_phases_median": {key: round(common.median([phases[key] for phases in plain_phases]), 3)
                                for key in ("import_numpy", "import_keras", "load", "in_process")},
        "plain_build_compile_per_fold": round(common.median(
            [sum(f["build"] + f["compile"] for f in phases["folds"]) / num_folds_total for phases in plain_phases]), 3),
        "targets": {"fixed_seconds_per_fold_max": TARGET_FIXED_SECONDS_PER_FOLD, "wall_ratio_max": TARGET_RATIO,
                    "fixed_met": common.median(fixed) <= TARGET_FIXED_SECONDS_PER_FOLD,
                    "ratio_met": xval_wall / plain_wall <= TARGET_RATIO},
    }


def run_benchmark(workspace, size, folder):
    """Interleaved repetitions of xval, plain and plain with evaluation (xval first in even repetitions, last in
    odd ones); returns the summary."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    environment = common.project_environment(workspace["config_path"])
    warm_up = common.warm_up_imports(environment, folder, folder / "warm_up.log") if size["warm_up"] else 0.0
    experiment_dict = benchmark_instances(size["instances"], size["epochs"])
    runs, plain_job, order = {"xval": [], "plain": [], "plain_eval": []}, None, []
    for repetition in range(size["reps"]):
        kinds = ("xval", "plain", "plain_eval")
        for kind in (kinds if repetition % 2 == 0 else tuple(reversed(kinds))):
            order.append(kind)
            if kind == "xval":
                runs[kind].append(run_xval(folder, workspace, experiment_dict, repetition + 1, size["num_folds"]))
                if plain_job is None:
                    plain_job = write_plain_job(folder / "plain_job.json", workspace, runs[kind][0]["experiment_dir"],
                                                size["instances"])
            else:
                runs[kind].append(run_plain(folder, workspace, plain_job, repetition, kind == "plain_eval"))
    summary = summarise(runs["xval"], runs["plain"], runs["plain_eval"], len(size["instances"]) * size["num_folds"])
    summary.update(order=order, warm_up_import_seconds=round(warm_up, 3),
                   xval_wall_per_repetition=[round(run["seconds"], 3) for run in runs["xval"]],
                   plain_wall_per_repetition=[round(run["seconds"], 3) for run in runs["plain"]],
                   plain_evaluating_wall_per_repetition=[round(run["seconds"], 3) for run in runs["plain_eval"]],
                   other_load_per_run={kind: [run["other_load"]["foreign_share_of_capacity"] for run in kind_runs]
                                       for kind, kind_runs in runs.items()})
    return summary


def main(argv=None):
    """Command line: run the benchmark, print and write its JSON."""
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each side (default 5; smoke 1)")
    args = parser.parse_args(argv)
    size = dict(SMOKE if args.smoke else FULL)
    if args.reps:
        size["reps"] = args.reps
    workspace = common.ensure_workspace(common.workdir_of(args), args.smoke)
    summary = run_benchmark(workspace, size, workspace["workdir"] / "overhead")
    result = {"benchmark": "overhead", "smoke": args.smoke,
              "size": {"instances": list(size["instances"]), "num_folds": size["num_folds"],
                       "epochs": size["epochs"], "reps": size["reps"]}, **summary}
    common.finish(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
