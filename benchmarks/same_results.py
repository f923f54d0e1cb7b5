"""Same results from two versions of xval: a redesign's safety net beyond the test suite.

    python3 benchmarks/same_results.py OLD_PROJECT NEW_PROJECT WORKDIR

OLD_PROJECT and NEW_PROJECT are checkouts (e.g. `git worktree add /tmp/old 167406f`). Six scenario routines
(classification with recipes, regression, a failed instance, windows, torch and jax backends, two CPU workers) run
once with each version on the same tiny demo datasets; then
  1. every results JSON (instance and fold) and folds.json are compared, times left aside (seconds, timings,
     started_at, finished_at) and keys a version added (folds.json's splitter);
  2. both workbooks are compared cell by cell (value, number format, fill, bold), time columns left aside;
  3. each old experiment folder is rendered by both versions' results_to_excel.py: every cell compared;
  4. the new version reruns each old experiment folder: the number of folds it trains (0 expected, but the failed
     instance's, which is retried).
Not run in CI (about 10 minutes on 2 cores); it prints one line per check and the totals.
"""
import argparse
import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TIME_KEYS = {"seconds", "timings", "started_at", "finished_at", "splitter"}
MODEL = ['architecture = "EXAMPLE_model"', "filters = [4]", "dense_units = 8", "num_epochs = 3", "batch_size = 16"]
POOLED = ['architecture = "POOLED_STATS_model"', "hidden_units = [8]", "num_epochs = 3", "batch_size = 16"]
ROUTINE = """import xval_instance
experiment_dict = {{}}
{lines}
xval_instance.run_routine(description="scenario {name}", gpu_ID=-1, dataset={dataset!r}, num_experiment=1,
    num_folds={folds}, experiment_folder={folder!r}, overwrite_results=False, debug_mode=False,
    experiment_dict=experiment_dict)
"""


def instance(comment, *extra, task="classification", model=MODEL):
    names = {text.split("=")[0].strip() for text in extra}
    return [f'task_type = "{task}"', f'comment_1 = "{comment}"', 'comment_2 = "s"',
            *[text for text in model if text.split("=")[0].strip() not in names], *extra]


SCENARIOS = {  # name: (dataset, folds, devices, instances)
    "classification": ("tiny", 3, "-1", {1: instance("cnn"), 2: instance("pooled", model=POOLED),
                                         3: instance("recipes", 'class_weight = "balanced"', "time_masks = 1",
                                                     "mixup_alpha = 0.2",
                                                     'save_best_model_metric = "val_balanced_accuracy"')}),
    "regression": ("tiny_intensity", 2, "-1", {1: instance("r cnn", task="regression"),
                                               2: instance("r pooled", task="regression", model=POOLED)}),
    "failed": ("tiny", 2, "-1", {1: instance("ok"), 2: instance("nan", "learning_rate = 1e12", "num_epochs = 2"),
                                 3: instance("ok2", "dense_units = 4")}),
    "windows": ("tiny_windows", 2, "-1", {1: instance("w cnn"), 2: instance("w pooled", model=POOLED)}),
    "backends": ("tiny", 2, "-1", {1: instance("torch", 'backend = "torch"'), 2: instance("jax", 'backend = "jax"'),
                                   3: instance("torchcnn", model=['architecture = "TORCH_CNN_model"',
                                                                  'backend = "torch"', "channels = [4]",
                                                                  "hidden_units = 8", "num_epochs = 2"])}),
    "workers": ("tiny", 3, "-1,-1", {1: instance("a"), 2: instance("b", "dropout = 0.1")}),
}


def make_datasets(project, data):
    """The tiny demo datasets (emotion, intensity, windows), made with project's preprocessing; returns the configs."""
    configs = {"": data / "config.ini", "windows": data / "config_windows.ini"}
    if configs["windows"].exists():
        return configs
    sys.path.insert(0, str(project))
    import demo_corpus
    import preprocessing_ravdess
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(project / "config.ini", encoding="utf-8")
    for key, value in {"ravdess_folder": "ravdess", "demo_folder": "audio", "features_folder": "features",
                       "experiment_folder": "experiments"}.items():
        parser.set("paths", key, str(data / value))
    for section, key, value in (("features", "n_fft", "512"), ("features", "win_length", "512"),
                                ("features", "hop_length", "256"), ("features", "n_mels", "32"),
                                ("preprocessing", "clip_seconds", "1.0")):
        parser.set(section, key, value)
    data.mkdir(parents=True, exist_ok=True)
    with open(configs[""], "w") as handle:
        parser.write(handle)
    demo_corpus.make_demo_corpus(data / "audio", n_actors=6, emotions=("neutral", "happy", "sad", "angry"),
                                 repetitions=(1,), clip_seconds_range=(0.8, 1.6), jobs=2)
    for dataset, target in (("tiny", "emotion"), ("tiny_intensity", "intensity")):
        preprocessing_ravdess.preprocess(data / "audio", dataset, configs[""], target=target, jobs=2, quiet=True)
    for key, value in (("clip_mode", "windows"), ("window_seconds", "0.5"), ("window_hop_seconds", "0.25")):
        parser.set("preprocessing", key, value)
    with open(configs["windows"], "w") as handle:
        parser.write(handle)
    preprocessing_ravdess.preprocess(data / "audio", "tiny_windows", configs["windows"], jobs=2, quiet=True)
    return configs


def run_scenarios(project, out, configs):
    """Each scenario's routine run with project into out/{scenario}/; returns {scenario: exit code}."""
    codes = {}
    for name, (dataset, folds, devices, instances) in SCENARIOS.items():
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        lines = "\n".join(f"experiment_dict[{key}] = {value!r}" for key, value in instances.items())
        routine = folder / "xval_routine_scenario.py"
        routine.write_text(ROUTINE.format(lines=lines, name=name, dataset=dataset, folds=folds,
                                          folder=str(folder / "experiments")))
        environment = dict(os.environ, XVAL_CONFIG=str(configs["windows" if name == "windows" else ""]),
                           PYTHONPATH=str(project), TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run([sys.executable, str(routine), str(min(instances)), str(max(instances)), devices],
                              env=environment, cwd=str(folder), capture_output=True, text=True)
        (folder / "console.txt").write_text(done.stdout + done.stderr)
        codes[name] = done.returncode
    return codes


def without_times(value):
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items() if key not in TIME_KEYS}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


def cells(path, every_cell):
    """{(sheet, cell): (value, number format, fill, bold)}; without every_cell, the numbers of time columns (a
    header holding 'seconds' or ending in ' s') and the 'Updated <time>' line are left out."""
    import openpyxl
    found = {}
    for sheet in openpyxl.load_workbook(path).worksheets:
        timed = {cell.column for row in sheet.iter_rows() for cell in row
                 if isinstance(cell.value, str) and ("seconds" in cell.value or cell.value.endswith(" s"))}
        for row in sheet.iter_rows():
            for cell in row:
                if not every_cell and ((cell.column in timed and isinstance(cell.value, (int, float)))
                                       or (isinstance(cell.value, str) and "Updated " in cell.value)):
                    continue
                found[(sheet.title, cell.coordinate)] = (cell.value, cell.number_format, cell.fill.fgColor.rgb,
                                                         cell.font.b)
    return found


def compare_books(first, second, every_cell):
    a, b = cells(first, every_cell), cells(second, every_cell)
    return len(a), sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))


def main():
    parser = argparse.ArgumentParser(description="Same results from two versions of xval (see the docstring).")
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    old, new, work = args.old.resolve(), args.new.resolve(), args.workdir.resolve()
    configs = make_datasets(new, work / "data")
    codes = {version: run_scenarios(project, work / version, configs)
             for version, project in (("old", old), ("new", new))}
    print("exit codes (old, new):", {name: (codes["old"][name], codes["new"][name]) for name in SCENARIOS})
    files = differing_files = cell_count = differing_cells = 0
    for name in SCENARIOS:
        a, b = (work / version / name / "experiments" / "experiment_1" for version in ("old", "new"))
        for path in sorted(a.rglob("*.json")):
            relative = path.relative_to(a)
            if relative.parts[0] != "results" and relative.name != "folds.json":
                continue
            files += 1
            other = b / relative
            if not other.exists() or without_times(json.loads(path.read_text())) != \
                    without_times(json.loads(other.read_text())):
                differing_files += 1
                print(f"  results differ: {name}/{relative}")
        for book in a.glob("*.xlsx"):
            count, differing = compare_books(book, b / book.name, every_cell=False)
            cell_count, differing_cells = cell_count + count, differing_cells + len(differing)
            print(f"  {name}: {count} cells, {len(differing)} different {differing[:3]}")
    print(f"1-2. new runs against old runs: {files} result files, {differing_files} different; {cell_count} cells, "
          f"{differing_cells} different")
    view_cells = view_differences = 0
    for name in SCENARIOS:
        books = []
        for version, project in (("old", old), ("new", new)):
            copy = work / "views" / f"{name}_{version}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(work / "old" / name / "experiments" / "experiment_1", copy,
                            ignore=shutil.ignore_patterns("*.png"))
            book = work / "views" / f"{name}_{version}.xlsx"
            subprocess.run([sys.executable, str(project / "results_to_excel.py"), str(copy), str(book)], check=True,
                           capture_output=True, env=dict(os.environ, PYTHONPATH=str(project)))
            books.append(book)
        count, differing = compare_books(*books, every_cell=True)
        view_cells, view_differences = view_cells + count, view_differences + len(differing)
    print(f"3. old folders rendered by both versions: {view_cells} cells, {view_differences} different")
    trained = {}
    for name in SCENARIOS:
        copy = work / "upgrade" / name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(work / "old" / name, copy)
        routine = copy / "xval_routine_scenario.py"
        routine.write_text(routine.read_text().replace(str(work / "old" / name), str(copy)))
        dataset, folds, devices, instances = SCENARIOS[name]
        done = subprocess.run([sys.executable, str(routine), str(min(instances)), str(max(instances)), devices],
                              env=dict(os.environ, XVAL_CONFIG=str(configs["windows" if name == "windows" else ""]),
                                       PYTHONPATH=str(new), TF_CPP_MIN_LOG_LEVEL="3"),
                              cwd=str(copy), capture_output=True, text=True)
        trained[name] = (done.returncode, sum(" on CPU" in line for line in done.stdout.splitlines()))
    print(f"4. old folders rerun by the new version (exit code, folds trained): {trained}")


if __name__ == "__main__":
    main()
