"""The fold-job protocol: one instance x one fold, the unit of work, claimed, run and recorded the same way
whatever runs it (the local executor's workers, a SLURM array task, a scheduler yet to come):

  build_job(plan, planned, fold, threads)  the job document: what training.py needs to train the fold, and what
                                           whoever lands it needs to record it (written to the fold's job file);
  attempt(job, launch)                     claim the fold job (a heartbeat keeps the claim alive), write its job
                                           file, keep a result made as planned or run launch(job file, log), record
                                           a failure, assemble the instance's results JSON, release the claim;
  collect_instance(...)                    that results JSON, from the fold results on disk (complete when the
                                           last fold lands, whoever lands it);
  report_attempt(...), fold_state(...)     what the console and --status say of a fold job.
Paths come from the experiment's Layout; a fold result is reused only if it was made from the same parameters,
dataset content and fold items as planned (fold_fingerprint), and its model file is there.
"""
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import NamedTuple

from layout import Layout, weights_path
from parameters import as_recorded, parameters_text
from registries import MAIN_METRIC
from utility_functions import (HOST, SPLITS, XvalError, atomic_write_json, atomic_write_text, claim,
                               dataset_file_stats, file_mutex, file_sha256, heartbeat, heartbeat_age,
                               heartbeat_interval, load_config, lock_owner_alive, mean_and_std, read_json,
                               recorded_fingerprint, release, slurm_job_id, to_jsonable)

JOB_FORMAT = 2  # 1: the job files of main at 167406f (paths spelt out in a "collect" section); 2: from the Layout


# ----------------------------------------------------------------------------------------------------------------
# What a fold result must have been made from

def fold_fingerprint(parameter_hash_value, dataset_fingerprint_value, fold):
    """What a fold result must have been made from to be reused: parameters, dataset content and the fold's items."""
    return {"parameter_hash": parameter_hash_value, "dataset_fingerprint": dataset_fingerprint_value,
            **{f"{split}_items": fold[f"{split}_items"] for split in SPLITS}}


def fold_result_problem(path, result, expected, experiment_dir):
    """Why the fold result at path cannot stand for the fold job fingerprinted `expected` (one line), or None."""
    if not isinstance(result, dict):
        return f"{path} is damaged (not a fold result)"
    if result.get("parameter_hash") != expected["parameter_hash"]:
        return f"{path} was computed with other parameters"
    if result.get("dataset_fingerprint") != expected["dataset_fingerprint"]:
        return f"{path} was trained on other features than the dataset files hold now (preprocessed again since?)"
    if any(result.get(key) != expected[key] for key in expected if key.endswith("_items")):
        return f"{path} was trained on another split than folds.json's"
    model = Path(experiment_dir) / str(result.get("model_file"))
    if not model.is_file():
        return f"{path} names the model {result.get('model_file')}, which is missing"
    if result.get("model_sha256") and file_sha256(model) != result["model_sha256"]:  # recorded since 2026-12-04
        return (f"{path} names the model {result.get('model_file')}, which changed since it was trained (cut short, "
                "or replaced by another file?)")
    return None


def reusable_folds(layout, instance, fingerprints):
    """The instance's completed folds that can be reused: ({fold index: result}, None), or (_, why not: one line).

    The instance's results JSON, where there is one, must carry the same parameter hash.
    """
    done = {}
    for index, expected in enumerate(fingerprints):
        path = layout.fold(instance, index + 1).result
        if not path.exists():
            continue
        result = read_json(path)
        problem = fold_result_problem(path, result, expected, layout.root)
        if problem:
            return done, problem
        done[index] = result
    path = layout.instance(instance).result
    recorded = read_json(path) if path.exists() else {}
    if not isinstance(recorded, dict):
        return done, f"{path} is damaged (not an instance's results)"
    if path.exists() and recorded.get("parameter_hash") != fingerprints[0]["parameter_hash"] and \
            (done or recorded.get("status") not in ("failed", "incomplete")):  # else no fold of it is kept: it restarts
        return done, f"{path} was computed with other parameters"
    return done, None


def recorded_parameters(layout, instance, num_folds, current_hash):
    """(parameter hash, resolved parameters) that an instance's finished results were computed with, where they
    differ from current_hash: its results JSON's; else (a SLURM array whose last fold has not landed, so no results
    JSON yet) those of the job file of its first fold result made otherwise, written before that fold trained and
    read only where its hash is the result's ({} where it is not). (None, {}) where every record agrees or none
    exists; with current_hash None, the first record whatever its hash."""
    recorded = read_if_readable(layout.instance(instance).result)
    if isinstance(recorded, dict) and recorded.get("parameter_hash") not in (None, current_hash):
        return recorded["parameter_hash"], recorded.get("parameters") or {}
    for fold in range(1, num_folds + 1):
        paths = layout.fold(instance, fold)
        result = read_if_readable(paths.result)
        if isinstance(result, dict) and result.get("parameter_hash") not in (None, current_hash):
            job = read_if_readable(paths.job)
            same = isinstance(job, dict) and job.get("parameter_hash") == result["parameter_hash"]
            return result["parameter_hash"], (job.get("parameters") or {}) if same else {}
    return None, {}


# ----------------------------------------------------------------------------------------------------------------
# The job document

def instance_record(plan, planned):
    """What assembling an instance's results JSON needs: its content besides the folds ("base") and the fold
    fingerprints a fold result must match."""
    layout, identity, parameters = plan.layout, plan.identity, planned.parameters
    base = {"experiment": layout.experiment, "instance": planned.instance, "dataset": layout.dataset,
            "task_type": parameters["task_type"], "parameter_hash": planned.hash,
            "dataset_fingerprint": identity["dataset_fingerprint"], "class_names": identity["class_names"],
            "foldable_item": identity["foldable_item"], "speaker_independent": identity["speaker_independent"],
            "features": identity["features"], "parameter_strings": list(planned.parameter_strings),
            "parameters": parameters,
            "parameters_file": layout.relative(layout.instance(planned.instance).parameters),
            "log_files": [layout.relative(layout.fold(planned.instance, fold["fold"]).log) for fold in plan.folds]}
    if planned.trial is not None:
        base["search"] = planned.trial
    return {"base": base, "fingerprints": list(planned.fingerprints)}


def model_card(plan, planned):
    """What a fold's model file carries to describe itself (besides what the fold adds: normalisation, its items):
    the dataset and features it takes, its classes and the instance's resolved parameters."""
    identity = plan.identity
    return {"dataset": plan.layout.dataset, "dataset_fingerprint": identity["dataset_fingerprint"],
            "experiment": plan.layout.experiment, "instance": planned.instance, "class_names": identity["class_names"],
            "features": identity["features"], "foldable_item": identity["foldable_item"],
            "parameter_strings": list(planned.parameter_strings)}


def build_job(plan, planned, fold, threads, **extra):
    """The job document of one fold job (fold: a fold of plan.folds; threads: the fold process's thread count)."""
    layout, number = plan.layout, fold["fold"]
    paths = layout.fold(planned.instance, number)
    return {"format": JOB_FORMAT, "experiment_dir": str(layout.root), "dataset": layout.dataset,
            "experiment": layout.experiment, "instance": planned.instance, "fold": number,
            "num_folds": len(plan.folds), "label": f"instance {planned.instance} fold {number}/{len(plan.folds)}",
            "features_folder": str(plan.features_folder), "dataset_files": plan.identity["dataset_files"],
            "parameters": planned.parameters, **planned.fingerprints[number - 1],
            "model_path": str(paths.model), "model_file": layout.relative(paths.model),
            "result_path": str(paths.result), "initial_model_path": planned.initial_models.get(number),
            "threads": threads, "overwrite_before": plan.created if plan.overwrite else None,
            "claim_grace": plan.claim_grace, "card": model_card(plan, planned), "debug": plan.debug,
            "tensorboard_dir": str(paths.tensorboard) if planned.parameters.get("tensorboard") else None,
            "record": instance_record(plan, planned), **extra}


def upgrade_job(job, path):
    """A job document of any format as the current one. Format 1 (main at 167406f; a SLURM array submitted before
    an upgrade still runs them) spelt out every path in "collect"; its layout gives the same paths."""
    if job.get("format", 1) >= JOB_FORMAT:
        return job
    collect = job["collect"]
    return {**{key: value for key, value in job.items() if key not in ("collect", "overwrite")},
            "format": JOB_FORMAT, "experiment_dir": collect["experiment_dir"],
            "experiment": collect["base"]["experiment"], "instance": collect["instance"],
            "num_folds": len(collect["fold_results"]),
            "overwrite_before": Path(path).stat().st_mtime if job.get("overwrite") else None,
            "claim_grace": load_config()["claims"]["grace_seconds"], "card": {},
            "record": {"base": collect["base"], "fingerprints": collect["fingerprints"]}}


def read_job(path):
    """The job document in a job file (any format), as the current format."""
    return upgrade_job(read_json(path), path)


def job_layout(job):
    return Layout(job["experiment_dir"], job["dataset"], job["experiment"])


# ----------------------------------------------------------------------------------------------------------------
# Assembling an instance's results JSON from its fold results

class Collected(NamedTuple):
    """What assembling an instance's results JSON gave: its status before and now, the document, and whether the
    file changed."""
    before: str
    status: str
    document: dict
    changed: bool
    differs: tuple = ()  # the keys of the results JSON that changed (when it existed before)


def summarise_folds(folds):
    """{split: {metric: {"mean", "std"}}} over folds: mean_and_std of each metric's values (None, or a split a fold
    lacks, skipped). What a results JSON's summary holds, and what the views recompute it from."""
    summary = {split: {} for split in SPLITS}
    for split in SPLITS:
        for name in sorted({name for fold in folds for name in fold["metrics"].get(split, {})}):
            stats = mean_and_std(fold["metrics"].get(split, {}).get(name) for fold in folds)
            summary[split][name] = {"mean": stats["mean"], "std": stats["std"]}
    return summary


def collect_instance(layout, instance, record, pruned_at=None, repeat_of=None):
    """Assemble an instance's results JSON from what is on disk now, under the instance's mutex, so that whoever
    lands its last fold writes it complete (record: instance_record's). Complete: every fold has a result made as
    planned (fingerprint and model); failed: a fold without one has a failure record; pruned: a search's trial
    stopped by its pruner after fold pruned_at; incomplete otherwise (folds pending, running elsewhere, or never
    run); repeat: a search's trial that repeated the point of the trial run as instance repeat_of, whose result
    stands for it (no fold of its own). An unchanged document leaves the file as it is."""
    paths = layout.instance(instance)
    with file_mutex(paths.mutex):
        folds, errors = [], []
        for index, expected in enumerate(record["fingerprints"]):
            fold = layout.fold(instance, index + 1)
            result = read_json(fold.result) if fold.result.exists() else None
            if result and not fold_result_problem(fold.result, result, expected, layout.root):
                folds.append(result)
            elif fold.failure.exists():
                errors.append(read_json(fold.failure)["error"])
        status = "repeat" if repeat_of is not None else "complete" if len(folds) == len(record["fingerprints"]) \
            else "failed" if errors else "pruned" if pruned_at else "incomplete"
        previous = read_json(paths.result) if paths.result.exists() else {}
        document = {**record["base"], "status": status, "error": errors[0] if errors else None, "folds": folds,
                    "summary": summarise_folds(folds) if folds else None,
                    **({"pruned_after_fold": pruned_at} if status == "pruned" else {}),
                    **({"repeat_of": repeat_of} if status == "repeat" else {})}
        now = json.loads(json.dumps(to_jsonable(document)))
        if previous:  # a key added since it was written, at its neutral value, is no reason to rewrite it
            now = dict(now, parameters=as_recorded(previous.get("parameters"), now.get("parameters")))
        changed = previous != now
        if changed:
            atomic_write_json(paths.result, document)
    differs = tuple(sorted(key for key in set(previous) | set(now) if previous.get(key) != now.get(key))) \
        if previous else ()
    return Collected(previous.get("status"), status, document, changed, differs)


# ----------------------------------------------------------------------------------------------------------------
# One attempt at a fold job

class Attempt(NamedTuple):
    """outcome: "busy" (detail: the live owner's claim), "done" (finished meanwhile by another process; detail: its
    result), "trained" (detail: the fold result), "failed" (detail: its error line) or "conflict" (another routine
    trains or trained this instance with other parameters since the plan: nothing was run or written; detail: the
    line saying so); collected: collect_instance's return, None when busy or conflict."""
    outcome: str
    detail: object
    collected: Collected = None


def record_failure(path, error):
    """The failure record of a fold job: its error line, and who failed it when."""
    atomic_write_json(path, {"error": error, "host": HOST, "pid": os.getpid(), "slurm_job": slurm_job_id(),
                             "when": time.strftime("%Y-%m-%d %H:%M:%S")})


def attempt(job, launch):
    """Claim the fold job `job`, train it unless it is done already, and assemble its instance's results.

    launch(job_path, log_path) runs training.py on the job file and returns (exit code, error line). The job file
    is written once the fold job is ours, so it always describes the last attempt. A fold result older than
    job["overwrite_before"] (set when overwrite_results asks to retrain) is replaced.
    """
    layout, instance, number = job_layout(job), job["instance"], job["fold"]
    paths = layout.fold(instance, number)
    folds = range(1, len(job["record"]["fingerprints"]) + 1)
    owner = claim(paths.lock, job["claim_grace"], job["parameter_hash"],
                  [layout.fold(instance, other).lock for other in folds if other != number])
    if owner and owner.get("conflict"):
        return Attempt("conflict", f"instance {instance}: another fold of it ({owner['lock']}) is being trained now "
                                   f"by {owner.get('host')} ({claim_owner_text(owner)}, since {owner.get('since')}) "
                                   "with other parameters: another routine on this experiment folder uses the same "
                                   "instance number; let it finish and give this instance another number")
    if owner:
        return Attempt("busy", owner)
    try:
        with heartbeat(paths.lock, heartbeat_interval(job["claim_grace"])):
            result_path = paths.result
            if job["overwrite_before"] is not None and result_path.exists() and \
                    result_path.stat().st_mtime < job["overwrite_before"]:
                for path in (result_path, paths.model, weights_path(paths.model)):
                    path.unlink(missing_ok=True)
                collect_instance(layout, instance, job["record"])  # no longer complete: a kill now leaves it so
            if result_path.exists():
                result = read_json(result_path)
                problem = fold_result_problem(result_path, result, job["record"]["fingerprints"][number - 1],
                                              layout.root)
                if problem:  # landed since the plan, from another routine with other parameters: not ours to judge
                    return Attempt("conflict", f"instance {instance}: {problem} (by another routine since this one "
                                               "started): set overwrite_results = True to retrain it, or give this "
                                               "instance another number")
                return Attempt("done", result, collect_instance(layout, instance, job["record"]))
            atomic_write_json(paths.job, job)  # only now: a fold job file describes the attempt that trained it
            with file_mutex(layout.instance(instance).mutex):  # its other folds may start now, on other workers
                atomic_write_text(layout.instance(instance).parameters,
                                  parameters_text(instance, job["parameters"],
                                                  job["record"]["base"].get("parameter_strings", []),
                                                  job["parameter_hash"]))
            paths.failure.unlink(missing_ok=True)
            code, error_line = launch(paths.job, paths.log)
            if code == 0 and result_path.exists():
                paths.stopped.unlink(missing_ok=True)  # a stop of an earlier attempt no longer stands
                return Attempt("trained", read_json(result_path), collect_instance(layout, instance, job["record"]))
            error = f"fold {number}: {error_line or ended_text(code)}"
            record_failure(paths.failure, f"{error} (log: {layout.relative(paths.log)})")
            return Attempt("failed", error, collect_instance(layout, instance, job["record"]))
    finally:
        release(paths.lock)


# ----------------------------------------------------------------------------------------------------------------
# What the console and --status say

def format_seconds(seconds):
    """12 s, 3 min 04 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def claim_owner_text(owner):
    """Who holds a claim, for the console: 'SLURM job 12_3' or 'pid 4567'."""
    return f"SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else f"pid {owner.get('pid')}"


def instance_done_line(document, num_folds, label):
    """The line printed when an instance's last fold lands."""
    main_metric = MAIN_METRIC[document["task_type"]]
    test = document["summary"]["test"][main_metric]
    return f"{label} complete: test {main_metric} {test['mean']:.3f} ± {test['std'] or 0:.3f} over {num_folds} folds"


def report_attempt(say, job, result, seconds, where, eta=None):
    """Print what one attempt at a fold job gave (one line; two for a failure, and the instance's line when this
    fold completed it). Returns whether the instance's results JSON was rewritten complete or failed just now."""
    label, (outcome, detail, collected) = job["label"], result
    if outcome == "busy":
        say(f"{label}: skipped, being run by {detail.get('host')} {claim_owner_text(detail)} since "
            f"{detail.get('since')}")
        return False
    if outcome == "conflict":
        say(f"{label}: not trained: {detail}", sys.stderr)
        return False
    main_metric = MAIN_METRIC[job["parameters"]["task_type"]]
    if outcome == "done":
        say(f"{label}: finished meanwhile by another process, kept")
    elif outcome == "trained":
        value = detail["metrics"]["test"].get(main_metric)
        say(f"{label} on {where}: test {main_metric} {value if value is None else f'{value:.3f}'}, best epoch "
            f"{detail['best_epoch']}/{detail['epochs_run']}, {format_seconds(seconds)}"
            f"{'' if eta is None else f', ETA {format_seconds(eta)}'}")
    else:
        say(f"{label} on {where}: FAILED after {format_seconds(seconds)}: {detail}\n"
            f"  log: {job_layout(job).fold(job['instance'], job['fold']).log}")
    if collected.status == "complete" and collected.changed:
        say(instance_done_line(collected.document, job["num_folds"], f"instance {job['instance']}"))
    return collected.status in ("complete", "failed") and collected.changed


def read_if_readable(path):
    """A JSON file's content, or None when it is missing, damaged or removed while being read (--status only)."""
    try:
        return read_json(path)
    except (OSError, XvalError):
        return None


def ended_text(code):
    """How a fold process that wrote no error line ended: its exit code, or the signal that killed it."""
    if code == -signal.SIGKILL:
        return "the fold process was killed (SIGKILL: the out-of-memory killer, a scheduler's memory limit, or kill -9)"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"the fold process was killed by signal {name}"
    return f"the fold process ended with exit code {code}"


def fold_state(layout, instance, fold, grace, verdict=None):
    """One fold job's state as a line: running (or a stale claim), done with its test main metric, failed, pending.
    verdict (--status): what the plan a run would make now says of a done fold: "reused" (its fingerprint checked:
    nothing to add) or "retrained" (overwrite_results = True); None: unknown, what changed since is guessed from
    folds.json and the dataset's file sizes and times."""
    paths = layout.fold(instance, fold)
    owner = read_if_readable(paths.lock)
    result = read_if_readable(paths.result)
    if owner:
        runner = claim_owner_text(owner)
        if lock_owner_alive(owner, heartbeat_age(paths.lock), grace):
            return f"running on {owner.get('host')} ({runner}) since {owner.get('since')}"
        if not result:  # a stale claim beside a result: killed after the result landed; the fold is done
            return (f"stale claim of {owner.get('host')} ({runner}, since {owner.get('since')}; the process is "
                    "gone): the next run takes it over")
    if result:
        model = result.get("model_file") if isinstance(result, dict) else None
        if model and not (layout.root / str(model)).is_file():
            return (f"done, but its model {model} is missing: a run refuses to reuse it (restore it, or "
                    "overwrite_results = True retrains it)")
        if verdict == "retrained":
            return "done; a run retrains it (overwrite_results = True)"
        changed = None if verdict else changed_since_trained(layout, fold, result, read_if_readable(paths.job))
        if changed:
            return f"done, but {changed}: a run checks whether it can still reuse it"
        metrics = result.get("metrics") if isinstance(result, dict) else None
        metrics = metrics.get("test") if isinstance(metrics, dict) else None
        metrics = metrics if isinstance(metrics, dict) else {}
        metric = next((name for name in MAIN_METRIC.values() if metrics.get(name) is not None), None)
        if metric and not (isinstance(metrics[metric], (int, float)) and math.isfinite(metrics[metric])):
            return f"done, but {paths.result.name} is damaged (test {metric} is {metrics[metric]!r})"
        return f"done, test {metric} {metrics[metric]:.3f}" if metric else "done"
    failed = read_if_readable(paths.failure)
    if failed:
        return f"failed: {failed.get('error')}"
    present = [path.name for path in (paths.lock, paths.result, paths.failure) if path.exists()]
    if present:
        return f"pending ({', '.join(present)} unreadable)"
    stopped = read_if_readable(paths.stopped)
    return f"pending ({stopped_text(stopped)})" if isinstance(stopped, dict) else "pending"


def changed_since_trained(layout, fold, result, job):
    """What changed since a fold result was made, as words, or None: folds.json now assigns other items to the
    fold, or the dataset's files were rewritten (the sizes and times its job file recorded). Read only, for
    --status; a run decides from the fingerprints."""
    split = read_if_readable(layout.folds)
    folds = split.get("folds") if isinstance(split, dict) else None
    entry = folds[fold - 1] if isinstance(folds, list) and len(folds) >= fold and isinstance(folds[fold - 1], dict) \
        else None
    if isinstance(result, dict) and entry and any(result.get(key) != entry.get(key)
                                                  for key in ("train_items", "val_items", "test_items")):
        return "folds.json now assigns other items to this fold (edited?)"
    if isinstance(job, dict) and job.get("dataset_files"):
        try:
            if dataset_file_stats(job["features_folder"], job["dataset"]) != job["dataset_files"] and \
                    recorded_fingerprint(job["features_folder"], job["dataset"]) != result.get("dataset_fingerprint"):
                return (f"the files of dataset '{job['dataset']}' were rewritten since it was trained with other "
                        "content (preprocessed again?)")
        except (XvalError, KeyError, TypeError, OSError, AttributeError):
            return f"the files of dataset '{job.get('dataset')}' cannot be read now"
    return None


def stopped_text(stopped):
    """What a fold's stopped record (layout.fold().stopped) says, as words."""
    job = f"SLURM job {stopped.get('slurm_job')}" if stopped.get("slurm_job") else f"a task on {stopped.get('host')}"
    return (f"{job} was stopped by its scheduler at {stopped.get('at')}, {stopped.get('seconds')} s after it "
            "started: cancelled, preempted or out of time; if the time limit, give a longer --time")
