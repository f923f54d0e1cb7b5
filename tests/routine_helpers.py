"""Write routine scripts the way a user does, and run them as real processes."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = ['architecture = "EXAMPLE_model"', "filters = [4]", "dense_units = 8", "num_epochs = 2",
              "batch_size = 16"]


def instance(comment, *extra, task_type="classification", model=TINY_MODEL):
    """Parameter strings of one quick instance; a string in extra replaces the model string of the same name."""
    overridden = {text.split("=")[0].strip() for text in extra}
    model = [text for text in model if text.split("=")[0].strip() not in overridden]
    return [f'task_type = "{task_type}"', f'comment_1 = "{comment}"', 'comment_2 = "test"', *model, *extra]


def write_routine(folder, experiment_dict, name="xval_routine_test.py", dataset="tiny", num_experiment=1,
                  num_folds=2, experiment_folder="experiments", overwrite_results=False, debug_mode=False,
                  gpu_ID=-1, description="a test routine"):
    """A routine script like xval_routine_example.py, written to folder/name; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["import xval_instance", f"description = {description!r}", f"gpu_ID = {gpu_ID!r}",
             f"dataset = {dataset!r}", f"num_experiment = {num_experiment!r}", f"num_folds = {num_folds!r}",
             f"experiment_folder = {str(experiment_folder)!r}", f"overwrite_results = {overwrite_results!r}",
             f"debug_mode = {debug_mode!r}", "experiment_dict = {}"]
    lines += [f"experiment_dict[{key!r}] = {value!r}" for key, value in experiment_dict.items()]
    lines.append("xval_instance.run_routine(description=description, gpu_ID=gpu_ID, dataset=dataset, "
                 "num_experiment=num_experiment, num_folds=num_folds, experiment_folder=experiment_folder, "
                 "overwrite_results=overwrite_results, debug_mode=debug_mode, experiment_dict=experiment_dict)")
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def routine_environment(config_path, project=REPO):
    """The environment of a routine process: the project importable, the test config in use."""
    environment = dict(os.environ, XVAL_CONFIG=str(config_path), PYTHONPATH=str(project),
                       TF_CPP_MIN_LOG_LEVEL="3")
    return environment


def run_routine(path, config_path, *arguments, project=REPO, timeout=600):
    """Run a routine script as a user does; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(path), *map(str, arguments)], capture_output=True, text=True,
                          env=routine_environment(config_path, project), cwd=str(Path(path).parent),
                          timeout=timeout)


def start_routine(path, config_path, *arguments, project=REPO):
    """Start a routine script without waiting (output to files next to it); returns the Popen."""
    log = open(Path(path).with_suffix(f".{len(arguments)}.out"), "ab")
    return subprocess.Popen([sys.executable, str(path), *map(str, arguments)], stdout=log, stderr=subprocess.STDOUT,
                            env=routine_environment(config_path, project), cwd=str(Path(path).parent),
                            start_new_session=True)


def copy_project(target):
    """A copy of the project's scripts in target (to add a broken architecture without touching the repo)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for script in REPO.glob("*.py"):
        shutil.copy2(script, target / script.name)
    shutil.copy2(REPO / "config.ini", target / "config.ini")
    return target


def experiment_files(experiment_dir):
    """{relative path: bytes} of every file under an experiment folder except logs, code snapshots and locks."""
    experiment_dir = Path(experiment_dir)
    return {path.relative_to(experiment_dir).as_posix(): path.read_bytes()
            for path in sorted(experiment_dir.rglob("*")) if path.is_file() and
            path.relative_to(experiment_dir).parts[0] not in ("logs", "code", "locks")}


def use_model(*arguments, config_path):
    """Run use_model.py as a user does; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(REPO / "use_model.py"), *map(str, arguments)], capture_output=True,
                          text=True, timeout=600, env=routine_environment(config_path))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def clip_files_of(metadata, items):
    """The audio files of the clips of items, in the order a fold's saved predictions list them."""
    root = Path(metadata["input_folder"] if "input_folder" in metadata else Path(metadata["source"]).parent)
    return [root / record["file"] for item in items for record in metadata["clips"]
            if record[metadata["foldable_item"]] == item]
