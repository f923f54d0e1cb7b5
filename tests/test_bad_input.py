"""The catalogue of bad input to a routine: each gives one clear line, a non-zero exit, and changes no result.

Every case runs a real routine process against an experiment that already holds finished results, then checks
that those results are byte-identical. (Preprocessing and spreadsheet refusals are tested in their own files.)
"""
import json
import signal
from pathlib import Path

import numpy as np
import pytest

from routine_helpers import experiment_files, instance, run_routine, write_routine
from utility_functions import load_dataset

GOOD = instance("good", "num_epochs = 1")


def without(strings, name):
    return [text for text in strings if not text.startswith(name)]


# id, routine settings (over the good routine), command-line arguments, config edit, expected words in the line
CATALOGUE = [
    ("cli-not-integer", {}, ["one"], None, "must be whole numbers"),
    ("cli-reversed-range", {}, ["2", "1"], None, "is after last instance"),
    ("cli-empty-range", {}, ["5", "9"], None, "no instance between 5 and 9"),
    ("cli-too-many-arguments", {}, ["1", "1", "0", "7"], None, "too many arguments"),
    ("parameter-not-python", {"experiment_dict": {1: GOOD + ["learning_rate = = 0.1"]}}, [], None,
     "is not a Python assignment"),
    ("parameter-unknown-name", {"experiment_dict": {1: GOOD + ["learnin_rate = 0.1"]}}, [], None,
     "did you mean learning_rate"),
    ("parameter-wrong-type", {"experiment_dict": {1: GOOD + ['patience = "big"']}}, [], None,
     "does not fit the default"),
    ("parameter-unquoted-string", {"experiment_dict": {1: GOOD + ["optimizer = adam"]}}, [], None,
     "quote strings"),
    ("parameter-not-finite", {"experiment_dict": {1: GOOD + ['learning_rate = float("nan")']}}, [], None,
     "is not a finite number"),
    ("parameter-without-effect", {"experiment_dict": {1: GOOD + ["patience = 2", "early_stopping = False"]}}, [],
     None, "has no effect with early_stopping = False"),
    ("parameter-mandatory-missing", {"experiment_dict": {1: without(GOOD, "comment_2")}}, [], None,
     "mandatory parameter comment_2 missing"),
    ("parameter-assigned-twice", {"experiment_dict": {1: GOOD + ['architecture = "CNN"']}}, [], None,
     "assigned twice"),
    ("unknown-architecture", {"experiment_dict": {1: without(GOOD, "architecture") +
                                                       ['architecture = "EXAMPLE_modl"']}}, [], None,
     "did you mean EXAMPLE_model"),
    ("unknown-task-type", {"experiment_dict": {1: without(GOOD, "task_type") + ['task_type = "ranking"']}}, [],
     None, "task_type 'ranking' is unknown"),
    ("parameters-not-a-list", {"experiment_dict": {1: "learning_rate = 0.1"}}, [], None,
     "must be a list of 'name = value' strings"),
    ("instance-key-not-integer", {"experiment_dict": {"1": GOOD}}, [], None, "keys must be whole numbers"),
    ("setting-wrong-type", {"num_folds": "2"}, [], None, "num_folds = '2' must be a int"),
    ("dataset-without-features", {"dataset": "tiny_typo"}, [], None, "has no tiny_typo_predictors.npy"),
    ("dataset-is-a-path", {"dataset": "data/tiny"}, [], None, "not a path"),
    ("dataset-counts-differ", {"dataset": "broken_counts"}, [], None, "predictor clips but"),
    ("dataset-items-differ", {"dataset": "broken_items"}, [], None, "hold different items"),
    ("dataset-nan-features", {"dataset": "broken_nan"}, [], None, "NaN or infinite"),
    ("target-does-not-fit-task", {"dataset": "tiny_intensity"}, [], None, "needs a one-hot target"),
    ("regression-on-one-hot-target", {"experiment_dict": {1: without(GOOD, "task_type") +
                                                          ['task_type = "regression"']}}, [], None,
     "needs one number per clip"),
    ("num-folds-below-2", {"num_folds": 1}, [], None, "must be a whole number of at least 2"),
    ("num-folds-above-items", {"num_folds": 7}, [], None, "more than the 6 items"),
    ("experiment-folder-not-writable", {"experiment_folder": "a_file/experiments"}, [], None, "is not writable"),
    ("folds-json-other-settings", {"num_folds": 3}, [], None, "was made with num_folds = 2"),
    ("folds-json-other-splitter", {}, [], "splitter-stratified", "was made with splitter = 'GroupKFold', this run "
     "has 'StratifiedGroupKFold'"),
    ("splitter-one-fold-per-item", {"num_experiment": 5}, [], "splitter-leave-one-out",
     "makes one fold per foldable item: set num_folds = 6"),
    ("splitter-needs-classes", {"num_experiment": 5, "dataset": "tiny_intensity", "experiment_dict": {
        1: without(GOOD, "task_type") + ['task_type = "regression"']}}, [], "splitter-stratified",
     "stratifies by class, and this dataset has no class labels"),
    ("slurm-bad-resources", {}, ["--slurm", "--cpus-per-task", "0"], None,
     "cpus_per_task must be 1 or more and max_parallel 0 (no cap) or more, got 0"),
    ("config-unknown-splitter", {}, [], "splitter-unknown", "[folds] splitter = 'ShuffleSplit' is not one of"),
    ("config-missing", {}, [], "delete", "does not exist"),
    ("config-unparsable", {}, [], "garble", "cannot be parsed"),
    ("config-missing-key", {}, [], "drop-patience", "[training] patience is missing"),
    ("config-wrong-type", {}, [], "batch-size-text", "[training] batch_size = 'many' is not a whole number"),
    ("config-bad-choice", {}, [], "optimizer-unknown", "is not one of adam"),
    ("config-not-finite", {}, [], "learning-rate-nan", "[training] learning_rate = 'nan' is not a finite number"),
]


def edit_config(source, target, edit):
    """A copy of the test config.ini with one mistake (or none written, for 'delete')."""
    text = source.read_text()
    if edit == "garble":
        text = "[training\nbatch_size 32\n"
    elif edit == "drop-patience":
        text = "\n".join(line for line in text.splitlines() if not line.startswith("patience"))
    elif edit == "batch-size-text":
        text = text.replace("batch_size = 32", "batch_size = many")
    elif edit == "learning-rate-nan":
        text = text.replace("learning_rate = 0.001", "learning_rate = nan")
    elif edit == "optimizer-unknown":
        text = text.replace("optimizer = adam", "optimizer = adamm")
    elif edit and edit.startswith("splitter-"):
        name = {"stratified": "StratifiedGroupKFold", "leave-one-out": "LeaveOneGroupOut", "unknown": "ShuffleSplit"}
        text = text.replace("splitter = GroupKFold", f"splitter = {name[edit[len('splitter-'):]]}")
    if edit != "delete":
        target.write_text(text)
    return target


@pytest.fixture(scope="module")
def finished(tiny_features, tmp_path_factory):
    """An experiment with one finished instance, and broken datasets next to the tiny one."""
    folder = tmp_path_factory.mktemp("catalogue")
    features = tiny_features["features_folder"]
    x, y = ({k: np.array(v) for k, v in arrays.items()} for arrays in load_dataset(features, "tiny"))
    # the broken datasets are .npz archives (format 1), whose items can disagree: still read, still checked
    first = sorted(x)[0]
    np.savez(features / "broken_counts_predictors.npz", **x)
    np.savez(features / "broken_counts_target.npz", **{**y, first: y[first][:-1]})
    np.savez(features / "broken_items_predictors.npz", **x)
    np.savez(features / "broken_items_target.npz", **{k: v for k, v in y.items() if k != first})
    nan = {**x, first: x[first].copy()}
    nan[first][0, 0, 0] = np.nan
    np.savez(features / "broken_nan_predictors.npz", **nan)
    np.savez(features / "broken_nan_target.npz", **y)
    (folder / "a_file").write_text("not a folder")
    routine = write_routine(folder, {1: GOOD})
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    return folder


@pytest.mark.parametrize("case, settings, arguments, config_edit, expected", CATALOGUE,
                         ids=[case[0] for case in CATALOGUE])
def test_bad_input_gives_one_clear_line_and_changes_nothing(tiny_features, finished, tmp_path, case, settings,
                                                            arguments, config_edit, expected):
    experiment_dir = finished / "experiments" / "experiment_1"
    before = experiment_files(experiment_dir)
    config = tiny_features["config_path"]
    if config_edit:
        config = edit_config(config, tmp_path / "config.ini", config_edit)
    routine = write_routine(finished, **{"experiment_dict": {1: GOOD}, **settings},
                            name=f"routine_{case.replace('-', '_')}.py")
    completed = run_routine(routine, config, *arguments)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("error: ") and completed.stderr.strip().count("\n") == 0, completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    assert experiment_files(experiment_dir) == before


def fold_servers(config_path):
    """PIDs of live fold servers (training.py --serve) whose environment names config_path as XVAL_CONFIG."""
    wanted = f"XVAL_CONFIG={config_path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours
            continue
        if b"--serve" in command and any(part.endswith(b"training.py") for part in command) and \
                wanted in environment:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("strings, exit_code", [(GOOD + ["learnin_rate = 0.1"], 2), (GOOD, 0)],
                         ids=["refused", "nothing-to-train"])
def test_a_routine_that_trains_nothing_leaves_no_fold_server_behind(tiny_features, finished, tmp_path, strings,
                                                                    exit_code):
    # the server starts before validation, so that TensorFlow loads meanwhile; it must not outlive the routine
    config = edit_config(tiny_features["config_path"], tmp_path / "config.ini", None)
    routine = write_routine(finished, {1: strings}, name="routine_server_check.py")
    completed = run_routine(routine, config)
    assert completed.returncode == exit_code, completed.stderr
    assert fold_servers(config) == []


def test_a_refusal_kills_the_fold_server_it_started(tiny_features, finished, monkeypatch):
    # in-process, to see the server itself: killed at once (SIGKILL), not left to finish importing TensorFlow
    import launchers
    import xval_instance
    from utility_functions import XvalError
    servers = []
    real_start = launchers.ForkServerLauncher.start

    def recording_start(launcher):
        real_start(launcher)
        servers.append(launcher.server)

    monkeypatch.setattr(launchers.ForkServerLauncher, "start", recording_start)
    monkeypatch.setenv("XVAL_CONFIG", str(tiny_features["config_path"]))
    settings = {"description": "refused", "gpu_ID": -1, "dataset": "tiny", "num_experiment": 1, "num_folds": 2,
                "experiment_folder": str(finished / "experiments"), "overwrite_results": False, "debug_mode": False,
                "experiment_dict": {1: GOOD + ["learnin_rate = 0.1"]}}
    routine_file = str(finished / "routine_refused.py")
    command, config = xval_instance.read_command(settings, [], routine_file)
    with pytest.raises(XvalError, match="learnin_rate"):
        xval_instance.prepare(settings, dict(command, argv=[], started=0.0), config, routine_file)
    assert len(servers) == 1 and servers[0].poll() == -signal.SIGKILL


def test_closing_a_fold_server_that_ran_no_fold_kills_it_without_waiting():
    from launchers import ForkServerLauncher, fold_environment
    launcher = ForkServerLauncher(fold_environment("tensorflow", 1, -1))
    launcher.start()
    server = launcher.server
    launcher.close()  # a server that ran a fold would be asked to finish (end of input) and waited for
    assert server.poll() == -signal.SIGKILL and launcher.server is None


def test_nan_loss_stops_the_fold_with_a_clear_error(tiny_features, finished):
    routine = write_routine(finished, {1: instance("nan", 'optimizer = "sgd"', "learning_rate = 1e30",
                                                   "num_epochs = 50", "early_stopping = False")},
                            num_experiment=2, name="routine_nan.py")
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 1
    document = json.loads((finished / "experiments" / "experiment_2" / "results" /
                           "results_tiny_exp2_run1.json").read_text())
    assert document["status"] == "failed" and "lower learning_rate" in document["error"]
    log = (finished / "experiments" / "experiment_2" / "logs" / "tiny_exp2_run1_fold1.log").read_text()
    assert log.count("xval-epoch: ") < 50, "training went on after the loss became NaN"


def test_debug_mode_shows_the_traceback_of_a_refusal(tiny_features, finished):
    routine = write_routine(finished, {1: GOOD + ["learnin_rate = 0.1"]}, debug_mode=True, name="routine_debug.py")
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 2  # as without debug_mode: the traceback replaces the line, not the code
    assert "Traceback" in completed.stderr and "XvalError" in completed.stderr


def test_the_catalogue_is_listed_in_the_readme():
    from routine_helpers import REPO
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [case[0] for case in CATALOGUE if f"`{case[0]}`" not in readme]
    assert not missing, f"README's bad-input catalogue lacks {missing}"
