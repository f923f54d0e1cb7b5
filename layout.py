"""The layout of an experiment folder: every path and file name inside {experiment_folder}/experiment_{N}/.

Nobody else spells a name: the plan, the executors, the fold-job protocol, training (through its job file),
collect, the spreadsheet, the plots and use_model.py all ask a Layout. A fold job's files (claim, job file, log,
failure record, model, result) are at one place whatever runs it:

    experiment_{N}_description.txt, folds.json, {dataset}_exp{N}_summary.json, {dataset}_exp{N}_results_spreadsheet.xlsx
    results/results_{stem}.json                 stem = {dataset}_exp{N}_run{R}: one per instance
    results/parameters/parameters_{stem}.txt
    results/baseline_{dataset}_exp{N}_{task_type}.json   the baseline on the experiment's folds (baseline.py)
    results/folds/results_{stem}_fold{F}.json   one per fold, written as it lands
    models/model_{stem}_fold{F}.hdf5            (.weights.h5 for a model wrapping a PyTorch module)
    logs/{stem}_fold{F}.log, .job.json, .failed.json; logs/launch_{time}_{host}_{pid}.json; logs/slurm_*.out
    locks/run{R}_fold{F}.lock (claims), locks/*.mutex
    tensorboard/run{R}_fold{F}/train, /validation  TensorBoard event files (tensorboard = True; run{R}_final too)
    slurm/{time}_{pid}/                          one --slurm submission
    final/model_{stem}_final.hdf5 (and its card, job, log, result), plots/{stem}_{kind}.png, code/{time}_{host}_{pid}/
"""
import re
from pathlib import Path
from typing import NamedTuple

WEIGHTS_SUFFIX = ".weights.h5"  # Keras 3's required ending of a weights-only file
# numbers written as the engine writes them (run01 is not run1: a copy, not a second instance 1)
RESULT_FILE_PATTERN = re.compile(
    r"^results_(?P<dataset>.+)_exp(?P<experiment>0|[1-9]\d*)_run(?P<instance>0|[1-9]\d*)\.json$")
RESULT_FILE_GLOB = "results_*_exp*_run*.json"
FOLD_MODEL_PATTERN = re.compile(
    r"^model_(?P<dataset>.+)_exp(?P<experiment>\d+)_run(?P<instance>\d+)_fold(?P<fold>\d+)(\.hdf5|\.weights\.h5)$")
SUMMARY_GLOB = "*_exp*_summary.json"


class InstancePaths(NamedTuple):
    """An instance's own files: its results JSON, its readable parameters, and the mutex held while the results
    JSON is assembled."""
    result: Path
    parameters: Path
    mutex: Path


class FoldPaths(NamedTuple):
    """A fold job's files: its claim, job file, log, failure record, model, result, and the record of a batch task
    stopped by its scheduler while it trained the fold (SIGTERM: cancelled, preempted or out of time), and its
    TensorBoard log folder (written only with tensorboard = True)."""
    lock: Path
    job: Path
    log: Path
    failure: Path
    model: Path
    result: Path
    stopped: Path
    tensorboard: Path


class SearchPaths(NamedTuple):
    journal: Path
    journal_lock: Path
    mutex: Path
    history_plot: Path
    importance_plot: Path


class FinalPaths(NamedTuple):
    """use_model.py final's files of an instance: the model, its card, its job, log and result, and its TensorBoard
    log folder (tensorboard = True)."""
    model: Path
    card: Path
    job: Path
    log: Path
    result: Path
    tensorboard: Path


def weights_path(model_path):
    """Where a model saved as weights only lies: model_….hdf5 -> model_….weights.h5 (same for relative names)."""
    text = str(model_path)
    return type(model_path)(text[:-len(".hdf5")] + WEIGHTS_SUFFIX) if text.endswith(".hdf5") else model_path


class Layout:
    """The files of experiment `experiment` on dataset `dataset` in folder root (experiment_{N})."""

    def __init__(self, root, dataset, experiment):
        self.root, self.dataset, self.experiment = Path(root), dataset, experiment
        self.results, self.models, self.logs = self.root / "results", self.root / "models", self.root / "logs"
        self.locks, self.plots, self.code = self.root / "locks", self.root / "plots", self.root / "code"
        self.slurm, self.final_folder = self.root / "slurm", self.root / "final"
        self.searches = self.root / "search"
        self.description = self.root / f"experiment_{experiment}_description.txt"
        self.folds = self.root / "folds.json"
        self.summary = self.root / f"{dataset}_exp{experiment}_summary.json"
        self.workbook = self.root / f"{dataset}_exp{experiment}_results_spreadsheet.xlsx"
        self.folds_mutex = self.locks / "folds.mutex"
        self.spreadsheet_mutex = self.locks / "spreadsheet.mutex"

    def __eq__(self, other):
        return isinstance(other, Layout) and (self.root, self.dataset, self.experiment) == \
            (other.root, other.dataset, other.experiment)

    def __repr__(self):
        return f"Layout({str(self.root)!r}, {self.dataset!r}, {self.experiment!r})"

    def stem(self, instance):
        """{dataset}_exp{N}_run{R}: the part every file of an instance shares."""
        return f"{self.dataset}_exp{self.experiment}_run{instance}"

    def relative(self, path):
        """path as the results files name it: relative to the experiment folder, with forward slashes."""
        return Path(path).relative_to(self.root).as_posix()

    def instance(self, instance):
        stem = self.stem(instance)
        return InstancePaths(result=self.results / f"results_{stem}.json",
                             parameters=self.results / "parameters" / f"parameters_{stem}.txt",
                             mutex=self.locks / f"run{instance}.mutex")

    def fold(self, instance, fold):
        stem = f"{self.stem(instance)}_fold{fold}"
        return FoldPaths(lock=self.locks / f"run{instance}_fold{fold}.lock", job=self.logs / f"{stem}.job.json",
                         log=self.logs / f"{stem}.log", failure=self.logs / f"{stem}.failed.json",
                         model=self.models / f"model_{stem}.hdf5",
                         result=self.results / "folds" / f"results_{stem}.json",
                         stopped=self.logs / f"{stem}.stopped.json",
                         tensorboard=self.root / "tensorboard" / f"run{instance}_fold{fold}")

    def final(self, instance):
        stem = f"model_{self.stem(instance)}_final"
        return FinalPaths(model=self.final_folder / f"{stem}.hdf5", card=self.final_folder / f"{stem}_card.json",
                          job=self.final_folder / f"{stem}.job.json", log=self.final_folder / f"{stem}.log",
                          result=self.final_folder / f"{stem}_result.json",
                          tensorboard=self.root / "tensorboard" / f"run{instance}_final")

    def baseline(self, task_type):
        """results/baseline_{dataset}_exp{N}_{task_type}.json: the experiment's baseline (baseline.py)."""
        return self.results / f"baseline_{self.dataset}_exp{self.experiment}_{task_type}.json"

    def plot(self, instance, kind):
        """plots/{stem}_{kind}.png (kind: curves, confusion)."""
        return self.plots / f"{self.stem(instance)}_{kind}.png"

    def launch_record(self, stamp, host, pid):
        return self.logs / f"launch_{stamp}_{host}_{pid}.json"

    def code_snapshot(self, stamp, host, pid):
        return self.code / f"{stamp}_{host}_{pid}"

    def submission(self, stamp, pid):
        """slurm/{time}_{pid}/: one --slurm submission's scripts, fold jobs and record."""
        return self.slurm / f"{stamp}_{pid}"

    def slurm_output(self, pattern):
        """logs/slurm_{pattern}.out (pattern: SLURM's filename pattern, e.g. %A_%a)."""
        return self.logs / f"slurm_{pattern}.out"

    def search(self, search):
        """A search's files: search/run{S}.journal (its Optuna study, a JournalFileBackend) and the lock files next to
        it; locks/search_run{S}.mutex (held while a trial is handed out)."""
        return SearchPaths(journal=self.searches / f"run{search}.journal",
                           journal_lock=self.searches / f"run{search}.journal.lock",
                           mutex=self.locks / f"search_run{search}.mutex",
                           history_plot=self.plots / f"search_run{search}_history.png",
                           importance_plot=self.plots / f"search_run{search}_importance.png")

    def trial_claim(self, instance):
        """locks/run{R}.trial.lock: held, with its heartbeat, by the process running trial instance R."""
        return self.locks / f"run{instance}.trial.lock"

    def claims_mutex(self):
        return self.locks / ".claims.mutex"
