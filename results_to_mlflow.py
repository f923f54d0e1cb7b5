"""Export an experiment's results to MLflow: one parent run for the routine, a child run per instance, and a child
of that per fold.

    python3 results_to_mlflow.py EXPERIMENT_FOLDER [--tracking-uri URI] [--experiment-name NAME] [--models]

What lands where:
  routine run  (name {dataset}_exp{N})   tags: the chosen instance (on validation), the selection-aware test estimate
               with its per-fold choices, the chosen instance's own test mean, per task type; artifacts: the workbook,
               the summary JSON, the PNGs of plots/
  instance run (name run{R} {comment_1})  params: the resolved parameters; metrics: {split}_{metric} (mean over the
               folds) and {split}_{metric}_std; tags: status, parameter hash, comments, error
  fold run     (name run{R} fold{F})      metrics: {split}_{metric} of the fold, and epoch_{key} for every key of
               its training history (step = epoch, from 1); tags: its train/val/test items, best epoch; artifacts
               (--models): the fold's model file

Like results_to_excel.py it reads only the results files (collect.load_instances) and never writes into the
experiment folder, so a read-only experiment exports. The store: --tracking-uri, else $MLFLOW_TRACKING_URI, else a
SQLite store beside the experiment folder ({parent}/mlflow.db; MLflow 3 refuses new file stores); a SQLite store's
artifacts go to mlartifacts/ beside it. Idempotent: every run carries the tag xval.key (experiment, instance, fold,
and the split's hash, so that two experiments of one name never meet) and xval.content (a hash of what it holds);
a run whose content is unchanged is kept, one that changed (an instance completed or retrained) is deleted with its
folds and made again, and the routine run is updated in place. A second export of the same results changes nothing.
"""
import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import collect
from layout import FOLD_MODEL_PATTERN, SUMMARY_GLOB, Layout, weights_path
from utility_functions import SPLITS, XvalError, exit_on_user_error

KEY_TAG, CONTENT_TAG, ARTIFACTS_TAG = "xval.key", "xval.content", "xval.artifacts"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under the run it names
PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter's value
BATCH = 100  # params and tags per log_batch call: MLflow's limit (metrics: 1000)
STATUS = {"complete": "FINISHED", "failed": "FAILED"}  # any other instance status: KILLED (not finished)


# ----------------------------------------------------------------------------------------------------------------
# What each run holds, from the results files alone (pure)

def split_hash(instances):
    """12 hex digits naming the experiment's split (every fold's test items), so that keys of two experiments of
    the same name and number in one MLflow experiment never collide."""
    folds = sorted({(fold["fold"], tuple(sorted(fold["test_items"]))) for instance in instances
                    for fold in instance.folds})
    return hashlib.sha256(json.dumps(folds).encode()).hexdigest()[:12]


def content_of(record):
    """The hash of a run record's params, metrics and tags: equal hashes, equal runs."""
    held = {key: record[key] for key in ("name", "params", "metrics", "tags")}
    return hashlib.sha256(json.dumps(held, sort_keys=True, default=str).encode()).hexdigest()[:16]


def routine_record(instances, root_key, baselines=None):
    """The routine run: tags of each task type's routine_summary (chosen instance, selection-aware estimate, and the
    baseline with the chosen instance's paired test against it, where baselines holds one)."""
    tags = {"xval.experiment": str(instances[0].experiment), "xval.dataset": instances[0].dataset,
            "xval.instances": ", ".join(str(instance.id) for instance in instances)}
    summaries = collect.routine_summaries(instances, baselines)
    for task_type, summary in summaries.items():
        prefix = "xval." if len(summaries) == 1 else f"xval.{task_type}."
        if summary is None or summary["chosen_on_validation"] is None:
            tags[f"{prefix}chosen_instance"] = "none (no complete instance)"
            continue
        estimate, chosen = summary["selection_aware_test"], summary["chosen_on_validation"]
        tags.update({f"{prefix}main_metric": summary["main_metric"],
                     f"{prefix}chosen_instance": str(chosen["instance"]),
                     f"{prefix}chosen_val_mean": repr(chosen["val"]["mean"]),
                     f"{prefix}selection_aware_test_mean": repr(estimate["mean"]),
                     f"{prefix}selection_aware_test_std": repr(estimate["std"]),
                     f"{prefix}selection_aware_per_fold": ", ".join(f"fold {entry['fold']}: instance "
                                                                    f"{entry['instance']}"
                                                                    for entry in estimate["per_fold"]),
                     f"{prefix}chosen_test_mean": repr(summary["chosen_test"]["mean"]),
                     f"{prefix}chosen_test_std": repr(summary["chosen_test"]["std"])})
        if summary.get("baseline"):
            test, versus = summary["baseline"]["summary"]["test"].get(summary["main_metric"], {}), \
                summary["baseline"]["chosen_vs_baseline"] or {}
            tags.update({f"{prefix}baseline": summary["baseline"]["about"],
                         f"{prefix}baseline_test_mean": repr(test.get("mean")),
                         f"{prefix}baseline_test_std": repr(test.get("std")),
                         f"{prefix}chosen_vs_baseline_p": repr(versus.get("p_value")),
                         f"{prefix}chosen_vs_baseline_difference": repr(versus.get("difference"))})
    return {"key": root_key, "name": f"{instances[0].dataset}_exp{instances[0].experiment}", "params": {},
            "metrics": [], "tags": tags}


def parameter_text(value):
    """A resolved parameter as MLflow keeps it: text (JSON for anything but a string), cut to its limit."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= PARAM_LIMIT else text[:PARAM_LIMIT - 3] + "..."


def instance_record(instance, root_key):
    """An instance's run: its resolved parameters, its mean and std over the folds of every metric and split."""
    metrics = []
    for split in SPLITS:
        for name, stats in sorted((instance.summary or {}).get(split, {}).items()):
            metrics += [(f"{split}_{name}", stats["mean"], 0)] if stats.get("mean") is not None else []
            metrics += [(f"{split}_{name}_std", stats["std"], 0)] if stats.get("std") is not None else []
    tags = {"xval.instance": str(instance.id), "xval.status": instance.status,
            "xval.parameter_hash": instance.parameter_hash, "xval.comment_1": instance.comment_1,
            "xval.comment_2": instance.comment_2}
    if instance.error:
        tags["xval.error"] = instance.error
    name = f"run{instance.id} {instance.comment_1}".strip()
    return {"key": f"{root_key}/run{instance.id}", "name": name, "status": STATUS.get(instance.status, "KILLED"),
            "params": {name: parameter_text(value) for name, value in sorted(instance.parameters.items())},
            "metrics": metrics, "tags": tags}


def fold_record(instance, fold, instance_key):
    """A fold's run: its metrics per split, its history per epoch (step = epoch, from 1), its items."""
    metrics = [(f"{split}_{name}", value, 0) for split in SPLITS
               for name, value in sorted(fold["metrics"].get(split, {}).items()) if value is not None]
    metrics += [(f"epoch_{key}", value, epoch) for key, values in sorted(fold["history"].items())
                for epoch, value in enumerate(values, 1) if value is not None]
    tags = {"xval.instance": str(instance.id), "xval.fold": str(fold["fold"]),
            "xval.model_file": str(fold.get("model_file")), "xval.best_epoch": str(fold.get("best_epoch")),
            **{f"xval.{split}_items": ", ".join(map(str, fold.get(f"{split}_items") or [])) for split in SPLITS}}
    return {"key": f"{instance_key}/fold{fold['fold']}", "name": f"run{instance.id} fold{fold['fold']}",
            "status": "FINISHED", "params": {}, "metrics": metrics, "tags": tags}


def routine_artifacts(experiment_folder, instances):
    """The files the routine run holds: the workbook and summary JSON where written, and every PNG of plots/."""
    layout = Layout(experiment_folder, instances[0].dataset, instances[0].experiment)
    found = [path for path in (layout.workbook, *sorted(experiment_folder.glob(SUMMARY_GLOB))) if
             path.is_file()]
    return found + sorted(layout.plots.glob("*.png"))


def fold_model_files(experiment_folder, fold):
    """A fold's model file and, for a PyTorch module, its weights file beside it (the files that exist)."""
    model = experiment_folder / str(fold.get("model_file"))
    if not FOLD_MODEL_PATTERN.match(model.name):
        return []
    return [path for path in (model, weights_path(model)) if path.is_file()]


def files_hash(paths):
    """A hash of files' names and contents: the artifacts a run holds, compared without uploading them again."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# The store

def default_tracking_uri(experiment_folder):
    """$MLFLOW_TRACKING_URI, else a SQLite store beside the experiment folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(experiment_folder).parent / 'mlflow.db'}"


def artifact_root(uri):
    """Where a new MLflow experiment's artifacts go: beside a SQLite store ({its folder}/mlartifacts; MLflow's
    default would be ./mlruns in whatever folder the export runs from), else where the server decides (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlartifacts").as_uri()


def mlflow_experiment(client, name, artifact_root):
    """The id of the MLflow experiment of this name, made when missing (artifact_root: where its artifacts go,
    None: the store's default)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise XvalError(f"MLflow experiment '{name}' was deleted: restore it (mlflow experiments restore) or "
                            "pass another --experiment-name")
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


class Exporter:
    """Runs made to match records: find by key, keep when the content (and parent) is the same, else replace."""

    def __init__(self, client, experiment_id):
        self.client, self.experiment_id = client, experiment_id
        self.counts = {"created": 0, "kept": 0, "replaced": 0, "updated": 0}
        self.deleted = set()  # keys of the runs deleted by this export (a replaced run's children among them)

    def find(self, key):
        """The live runs tagged with key (more than one only if an export was interrupted between two calls)."""
        from mlflow.entities import ViewType
        escaped = key.replace("'", "\\'")
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{escaped}'",
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=100)

    def delete_tree(self, run_id):
        """Delete a run and every run below it (MLflow deletes softly: `mlflow gc` purges)."""
        from mlflow.entities import ViewType
        for child in self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = "
                                             f"'{run_id}'", run_view_type=ViewType.ACTIVE_ONLY, max_results=50000):
            self.delete_tree(child.info.run_id)
        self.deleted.add(self.client.get_run(run_id).data.tags.get(KEY_TAG))
        self.client.delete_run(run_id)

    def create(self, record, parent_id, content):
        from mlflow.entities import Metric, Param, RunTag
        tags = {**record["tags"], KEY_TAG: record["key"], CONTENT_TAG: content}
        if parent_id:
            tags[PARENT_TAG] = parent_id
        run_id = self.client.create_run(self.experiment_id, run_name=record["name"]).info.run_id
        params = [Param(name, value) for name, value in record["params"].items()]
        metrics = [Metric(name, float(value), 0, step) for name, value, step in record["metrics"]]
        tag_list = [RunTag(name, str(value)) for name, value in tags.items()]
        for start in range(0, max(len(params), len(metrics), len(tag_list)), BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + BATCH], params=params[start:start + BATCH],
                                  tags=tag_list[start:start + BATCH])
        return run_id

    def ensure(self, record, parent_id=None, artifacts=()):
        """The id of the run holding record under parent_id: kept when it already does, else made (again)."""
        content, held = content_of(record), files_hash(artifacts) if artifacts else None
        found = self.find(record["key"])
        same = [run for run in found if run.data.tags.get(CONTENT_TAG) == content and
                run.data.tags.get(PARENT_TAG) == parent_id and run.data.tags.get(ARTIFACTS_TAG) == held]
        for run in found:
            if not same or run is not same[0]:
                self.delete_tree(run.info.run_id)
        if same:
            self.counts["kept"] += 1
            return same[0].info.run_id
        self.counts["replaced" if found or record["key"] in self.deleted else "created"] += 1
        run_id = self.create(record, parent_id, content)
        for path in artifacts:
            self.client.log_artifact(run_id, str(path), "models" if FOLD_MODEL_PATTERN.match(path.name) else None)
        if artifacts:
            self.client.set_tag(run_id, ARTIFACTS_TAG, held)
        self.client.set_terminated(run_id, status=record.get("status", "FINISHED"))
        return run_id

    def update_in_place(self, record, artifacts):
        """The routine run: made once, then its tags and artifacts updated where they changed (its children keep
        their parent)."""
        found = self.find(record["key"])
        for extra in found[1:]:
            self.delete_tree(extra.info.run_id)
        if not found:
            return self.ensure(record, None, artifacts)
        run = found[0]
        wanted = {**record["tags"], CONTENT_TAG: content_of(record)}
        changed = {name: value for name, value in wanted.items() if run.data.tags.get(name) != value}
        for name in [name for name in run.data.tags if name.startswith("xval.") and name not in wanted and
                     name not in (KEY_TAG, ARTIFACTS_TAG)]:
            self.client.delete_tag(run.info.run_id, name)
            changed[name] = None
        for name, value in changed.items():
            if value is not None:
                self.client.set_tag(run.info.run_id, name, value)
        held = files_hash(artifacts) if artifacts else None
        if held and run.data.tags.get(ARTIFACTS_TAG) != held:
            for path in artifacts:
                self.client.log_artifact(run.info.run_id, str(path))
            self.client.set_tag(run.info.run_id, ARTIFACTS_TAG, held)
            changed[ARTIFACTS_TAG] = True
        self.counts["updated" if changed else "kept"] += 1
        return run.info.run_id


def export(experiment_folder, tracking_uri=None, experiment_name=None, models=False):
    """Export the experiment folder's results (see the module docstring); returns (tracking URI, MLflow experiment
    name, counts of runs created, kept, replaced and updated)."""
    experiment_folder = Path(experiment_folder).resolve()
    instances = collect.load_instances(experiment_folder)
    name = experiment_name or f"{instances[0].dataset}_exp{instances[0].experiment}"
    uri = tracking_uri or default_tracking_uri(experiment_folder)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise XvalError("MLflow is not installed: python3 -m pip install -r requirements-tracking.txt") from None
    from mlflow.exceptions import MlflowException
    try:
        client = MlflowClient(uri)
        exporter = Exporter(client, mlflow_experiment(client, name, artifact_root(uri)))
        root_key = f"{instances[0].dataset}_exp{instances[0].experiment}@{split_hash(instances)}"
        baselines = collect.load_baselines(experiment_folder, instances)
        routine_id = exporter.update_in_place(routine_record(instances, root_key, baselines),
                                              routine_artifacts(experiment_folder, instances))
        for instance in instances:
            record = instance_record(instance, root_key)
            instance_id = exporter.ensure(record, routine_id)
            for fold in instance.folds:
                exporter.ensure(fold_record(instance, fold, record["key"]), instance_id,
                                fold_model_files(experiment_folder, fold) if models else ())
    except MlflowException as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise XvalError(f"MLflow store {uri}: {first}: check --tracking-uri (a server that runs, or a folder "
                        "that can be written)") from None
    except OSError as error:
        raise XvalError(f"MLflow store {uri} cannot be written ({error.strerror or error}): pass --tracking-uri "
                        "elsewhere, e.g. sqlite:///$HOME/mlflow.db") from None
    return uri, name, exporter.counts


def main(argv=None):
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Export an experiment's results to MLflow: a parent run for the "
                                                 "routine, a child per instance, a child of that per fold.")
    parser.add_argument("experiment_folder", help="an experiment_{N} folder (the one holding results/)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                               "sqlite:///{the experiment folder's parent}/mlflow.db)")
    parser.add_argument("--experiment-name", help="MLflow experiment (default: {dataset}_exp{N})")
    parser.add_argument("--models", action="store_true", help="upload every fold's model file as an artifact")
    parser.add_argument("--debug", action="store_true", help="show a traceback instead of one error line")
    arguments = parser.parse_args(argv)
    uri, name, counts = exit_on_user_error(lambda: export(arguments.experiment_folder, arguments.tracking_uri,
                                                          arguments.experiment_name, arguments.models),
                                           debug=arguments.debug)
    print(f"exported to MLflow experiment '{name}' at {uri}: " + ", ".join(f"{n} run(s) {word}"
                                                                          for word, n in counts.items() if n) +
          f" (view: mlflow ui --backend-store-uri {uri})")


if __name__ == "__main__":
    sys.exit(main())
