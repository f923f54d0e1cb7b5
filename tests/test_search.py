"""A routine that searches: N trials and no more (killed and rerun, or two routines on one journal), pruning of a
clearly bad trial at fold 1, a grid visited once per point, the selection-aware estimate recomputed from the fold
results, the search sheet, and every bad search string refused before anything runs.

Waits are for observed progress (an epoch line in a fold's log), never a fixed sleep.
"""
import itertools
import json
import math
import os
import signal

import openpyxl
import pytest

from routine_helpers import instance, run_routine, start_routine, write_routine
from test_resilience import wait_for_progress

try:
    import optuna
except ImportError:  # requirements-search.txt; CI installs it and never skips
    optuna = None
pytestmark = pytest.mark.skipif(optuna is None and os.environ.get("CI") != "true",
                                reason="Optuna is not installed (pip install -r requirements-search.txt)")

SEARCH = 10  # the search's key: its trials are instances 10, 11, ...


def search_strings(*space, trials=4, sampler="random", seed=0, pruner=None, startup=1, **model):
    """A search instance of the tiny model: its distributions, then its settings."""
    settings = [f"search_trials = {trials}", f'search_sampler = "{sampler}"', f"search_seed = {seed}"] + (
        [f"search_startup_trials = {startup}"] if sampler == "tpe" or pruner in (None, "median") else []) + (
        [f'search_pruner = "{pruner}"'] if pruner else [])
    return instance("search", *space, *settings, **model)


def trials_of(experiment_dir, key=SEARCH):
    """The search's Optuna trials, read from its journal."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(experiment_dir / "search" / f"run{key}.journal")))
    return optuna.load_study(study_name=f"run{key}", storage=storage).get_trials()


def results(experiment_dir):
    """{instance id: results JSON} of every instance."""
    return {document["instance"]: document for document in
            (json.loads(path.read_text()) for path in (experiment_dir / "results").glob("results_*.json"))}


def fold_runs(experiment_dir):
    """[(instance, fold)] of every fold process every launch ran (from the launch records)."""
    return [(run["instance"], run["fold"]) for path in (experiment_dir / "logs").glob("launch_*.json")
            for run in json.loads(path.read_text())["fold_runs"]]


@pytest.fixture(scope="module")
def killed_and_rerun(tiny_features, tmp_path_factory):
    """A search of 4 trials (random sampler, median pruner) over 2 folds, SIGKILLed while its second trial trains,
    then run again to its end."""
    folder = tmp_path_factory.mktemp("search")
    space = ['learning_rate = choice(0.003, 0.001)', 'dense_units = intrange(4, 8, step=4)']
    routine = write_routine(folder, {1: instance("hand"), SEARCH: search_strings(*space)}, num_folds=2)
    experiment_dir = folder / "experiments" / "experiment_1"
    process = start_routine(routine, tiny_features["config_path"], SEARCH)
    second_trial = experiment_dir / "logs" / f"tiny_exp1_run{SEARCH + 1}_fold1.log"
    while not (second_trial.exists() and "xval-epoch: " in second_trial.read_text(errors="replace")):
        assert wait_for_progress(process, experiment_dir, "epoch"), "the routine ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the routine and its fold process, mid-trial
    process.wait()
    killed = {trial.number: trial.state.name for trial in trials_of(experiment_dir)}
    status = run_routine(routine, tiny_features["config_path"], "--status")
    rerun = run_routine(routine, tiny_features["config_path"])
    return {"routine": routine, "dir": experiment_dir, "killed": killed, "rerun": rerun, "config": tiny_features[
        "config_path"], "status": status}


def test_a_killed_search_ends_with_exactly_its_trials_each_trial_run_once(killed_and_rerun):
    rerun, experiment_dir = killed_and_rerun["rerun"], killed_and_rerun["dir"]
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "RUNNING" in killed_and_rerun["killed"].values(), "the kill did not land in a trial"
    assert "1 left running by a process or task that is gone: the next run continues them" in \
        killed_and_rerun["status"].stdout, killed_and_rerun["status"].stdout
    trials = trials_of(experiment_dir)
    assert [trial.number for trial in trials] == [0, 1, 2, 3]
    assert all(trial.state.name in ("COMPLETE", "PRUNED") for trial in trials)
    documents = results(experiment_dir)
    for trial in trials:
        document = documents[SEARCH + trial.number]
        assert document["search"] == {"search": SEARCH, "trial": trial.number, "params": trial.params}
        assert document["status"] == ("repeat" if "xval_repeat_of" in trial.user_attrs else trial.state.name.lower())
        assert (experiment_dir / "results" / "parameters" / f"parameters_tiny_exp1_run{SEARCH + trial.number}.txt"
                ).exists()
        folds = sorted(document["folds"], key=lambda fold: fold["fold"])
        values = [fold["metrics"]["val"]["balanced_accuracy"] for fold in folds]
        assert trial.intermediate_values == {  # what the pruner saw: the mean of the folds so far
            fold["fold"]: pytest.approx(sum(values[:k]) / k) for k, fold in enumerate(folds, 1)}
    runs = fold_runs(experiment_dir)
    assert len(runs) == len(set(runs)), "a fold finished in one launch was trained again"
    assert "search 10: " in rerun.stdout and "Report for search 10: selection-aware test" in rerun.stdout
    again = run_routine(killed_and_rerun["routine"], killed_and_rerun["config"])
    assert again.returncode == 0 and len(trials_of(experiment_dir)) == 4
    assert "fold 1/2 on" not in again.stdout, "a rerun of a finished search trained again"


def test_the_selection_aware_estimate_recomputed_from_the_fold_results_is_the_reported_one(killed_and_rerun):
    experiment_dir = killed_and_rerun["dir"]
    summary = json.loads(next(experiment_dir.glob("*_summary.json")).read_text())["searches"][str(SEARCH)]
    documents = [document for document in results(experiment_dir).values() if document.get("search")]
    complete = [document for document in documents if document["status"] == "complete"]
    assert summary["trials"] == {status: sum(d["status"] == status for d in documents)
                                 for status in {d["status"] for d in documents}}
    chosen_tests = []
    for fold in (1, 2):
        scores = {d["instance"]: next(f for f in d["folds"] if f["fold"] == fold)["metrics"] for d in complete}
        best = max(scores, key=lambda number: (scores[number]["val"]["balanced_accuracy"], -number))
        chosen_tests.append(scores[best]["test"]["balanced_accuracy"])
    reported = summary["summary"]["selection_aware_test"]
    assert math.isclose(reported["mean"], sum(chosen_tests) / len(chosen_tests))
    best_mean = max(complete, key=lambda d: (d["summary"]["val"]["balanced_accuracy"]["mean"], -d["instance"]))
    assert summary["summary"]["chosen_on_validation"]["instance"] == best_mean["instance"]
    pruned = {d["instance"] for d in documents if d["status"] == "pruned"}
    assert not pruned & {entry["instance"] for entry in reported["per_fold"]}


def test_the_workbook_has_a_search_sheet_with_every_trial_and_optunas_figures(killed_and_rerun):
    experiment_dir = killed_and_rerun["dir"]
    workbook = openpyxl.load_workbook(next(experiment_dir.glob("*_results_spreadsheet.xlsx")))
    sheet = workbook[f"search {SEARCH}"]
    rows = [row for row in sheet.iter_rows(values_only=True)]
    header = next(index for index, row in enumerate(rows) if row[0] == "trial")
    trials = {row[1]: row[2] for row in rows[header + 1:] if isinstance(row[0], int)}
    documents = results(experiment_dir)
    shown = {"pruned": "pruned after fold {pruned_after_fold}",
             "repeat": "repeat of trial {trial} (instance {repeat_of})"}
    assert trials == {number: shown.get(document["status"], document["status"]).format(
        trial=(document.get("repeat_of") or 0) - SEARCH, **document) for number, document in documents.items()
        if number >= SEARCH}
    assert any("Report for search 10" in str(row[0]) for row in rows[:header])
    complete = sum(trial.state.name == "COMPLETE" for trial in trials_of(experiment_dir))  # repeats included
    assert len(sheet._images) == (2 if complete >= 2 else 1)  # Optuna draws importances from two complete trials
    assert (experiment_dir / "plots" / f"search_run{SEARCH}_history.png").stat().st_size > 0


def test_a_changed_search_is_refused_on_a_journal_made_by_another(killed_and_rerun, tmp_path):
    routine = killed_and_rerun["routine"]
    text = routine.read_text().replace("choice(0.003, 0.001)", "choice(0.003, 0.002)")
    changed = routine.with_name("changed.py")
    changed.write_text(text)
    status = run_routine(changed, killed_and_rerun["config"], "--status")
    before = {path: path.stat().st_mtime_ns for path in killed_and_rerun["dir"].rglob("*")}
    refused = run_routine(changed, killed_and_rerun["config"])
    assert refused.returncode == 2
    # refused while planning: no code snapshot, description or log written first
    assert {path: path.stat().st_mtime_ns for path in killed_and_rerun["dir"].rglob("*")} == before
    assert "holds the trials of another search (space changed)" in refused.stderr, refused.stderr
    assert "xval: a run of these instances would now refuse: search " in status.stdout and \
        "holds the trials of another search (space changed)" in status.stdout, status.stdout


def test_two_routines_sharing_a_journal_never_run_the_same_trial(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {SEARCH: search_strings('learning_rate = loguniform(1e-3, 1e-2)', trials=4,
                                                              pruner="none")}, num_folds=2)
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    first, second = (start_routine(routine, tiny_features["config_path"], str(n)) for n in (SEARCH, SEARCH))
    assert first.wait(timeout=600) in (0, 3) and second.wait(timeout=600) in (0, 3)
    trials = trials_of(experiment_dir)
    assert len(trials) == 4 and all(trial.state.name == "COMPLETE" for trial in trials)
    runs = fold_runs(experiment_dir)
    assert sorted(runs) == sorted((SEARCH + n, fold) for n in range(4) for fold in (1, 2)), \
        "a fold job of a trial ran twice, or not at all"
    assert len({json.loads(path.read_text())["pid"] for path in (experiment_dir / "logs").glob("launch_*.json")}) == 2


def test_pruning_stops_a_trial_with_an_absurd_learning_rate_at_fold_1(tiny_features, tmp_path):
    strings = search_strings('learning_rate = choice(0.01, 1e-9)', trials=4, seed=0, task_type="regression",
                             model=['architecture = "EXAMPLE_model"', "filters = [4]", "dense_units = 8",
                                    "num_epochs = 3", "batch_size = 16"])
    routine = write_routine(tmp_path, {SEARCH: strings}, num_folds=3, dataset="tiny_intensity")
    finished = run_routine(routine, tiny_features["config_path"])
    assert finished.returncode == 0, finished.stdout + finished.stderr
    trials = trials_of(tmp_path / "experiments" / "experiment_1")
    absurd = [trial for trial in trials if trial.params["learning_rate"] == 1e-9 and trial.number > 0]
    assert trials[0].params["learning_rate"] == 0.01, "seed 0 should try the sound learning rate first"
    assert absurd and all(trial.state.name == "PRUNED" and max(trial.intermediate_values) == 1 for trial in absurd)
    documents = results(tmp_path / "experiments" / "experiment_1")
    assert all(documents[SEARCH + t.number]["status"] == "pruned" and len(documents[SEARCH + t.number]["folds"]) == 1
               for t in absurd)
    assert "pruned after fold 1" in finished.stdout
    status = run_routine(routine, tiny_features["config_path"], "--status").stdout
    for trial in absurd:  # its later folds are never trained: not 'pending'
        assert f"instance {SEARCH + trial.number}: 1 done, 2 not trained" in status, status
        assert "fold 3: not trained: the trial was pruned after fold 1" in status, status


def test_a_grid_search_visits_every_point_once(tiny_features, tmp_path):
    space = ['learning_rate = choice(0.003, 0.001)', 'dense_units = intrange(4, 8, step=4)', 'num_epochs = 1']
    routine = write_routine(tmp_path, {SEARCH: instance("grid", *space, 'search_sampler = "grid"')}, num_folds=2)
    finished = run_routine(routine, tiny_features["config_path"])
    assert finished.returncode == 0, finished.stdout + finished.stderr
    trials = trials_of(tmp_path / "experiments" / "experiment_1")
    visited = sorted((t.params["learning_rate"], t.params["dense_units"]) for t in trials)
    assert visited == sorted(itertools.product((0.003, 0.001), (4, 8)))
    assert all(trial.state.name == "COMPLETE" for trial in trials)


def test_a_point_proposed_again_reuses_the_earlier_trials_result_and_trains_nothing(tiny_features, tmp_path):
    # 4 random trials over 2 points: at least 2 trials repeat a point an earlier trial ran
    routine = write_routine(tmp_path, {SEARCH: search_strings('learning_rate = choice(0.003, 0.001)', trials=4,
                                                              pruner="none")}, num_folds=2)
    finished = run_routine(routine, tiny_features["config_path"])
    assert finished.returncode == 0, finished.stdout + finished.stderr
    experiment_dir = tmp_path / "experiments" / "experiment_1"
    trials, documents = trials_of(experiment_dir), results(experiment_dir)
    assert len(trials) == 4 and all(trial.state.name == "COMPLETE" for trial in trials)
    first_of = {}
    for trial in trials:
        first_of.setdefault(trial.params["learning_rate"], trial.number)
    repeats = [trial for trial in trials if first_of[trial.params["learning_rate"]] != trial.number]
    assert len(repeats) >= 2
    for trial in repeats:
        earlier = trials[first_of[trial.params["learning_rate"]]]
        document = documents[SEARCH + trial.number]
        assert document["status"] == "repeat" and document["repeat_of"] == SEARCH + earlier.number
        assert document["folds"] == [] and trial.value == earlier.value
        assert f"search {SEARCH} trial {trial.number} (instance {SEARCH + trial.number}: learning_rate = " \
               f"{trial.params['learning_rate']}): repeats trial {earlier.number} (the same parameters)" \
               in finished.stdout
    assert "1 complete (search 10)" in finished.stdout, finished.stdout
    assert sorted(fold_runs(experiment_dir)) == sorted((SEARCH + number, fold) for number in first_of.values()
                                                        for fold in (1, 2)), "a repeated point was trained again"
    summary = json.loads((experiment_dir / "tiny_exp1_summary.json").read_text())
    assert sorted(summary["searches"][str(SEARCH)]["summary"]["complete_instances"]) == sorted(
        SEARCH + number for number in first_of.values())
    sheet = openpyxl.load_workbook(next(experiment_dir.glob("*.xlsx")))[f"search {SEARCH}"]
    shown = [cell.value for row in sheet.iter_rows() for cell in row if str(cell.value).startswith("repeat of")]
    assert sorted(shown) == sorted(f"repeat of trial {first_of[t.params['learning_rate']]} (instance "
                                   f"{SEARCH + first_of[t.params['learning_rate']]})" for t in repeats)
    again = run_routine(routine, tiny_features["config_path"])
    assert again.returncode == 0 and len(trials_of(experiment_dir)) == 4 and len(fold_runs(experiment_dir)) == \
        2 * len(first_of), again.stdout + again.stderr
    status = run_routine(routine, tiny_features["config_path"], "--status")
    assert f"search {SEARCH}: 4 of 4 trials asked ({len(first_of)} complete, {len(repeats)} repeats of an earlier " \
           "point)" in status.stdout, status.stdout
    for trial in repeats:
        earlier = first_of[trial.params["learning_rate"]]
        assert f"instance {SEARCH + trial.number}: repeat of trial {earlier} (instance {SEARCH + earlier}): its " \
               "result stands for this trial, no fold of its own" in status.stdout, status.stdout
    lost = experiment_dir / "results" / f"results_tiny_exp1_run{SEARCH}.json"
    lost.unlink()  # a finished trial's results deleted: never reported as if they were there, never run twice
    refused = run_routine(routine, tiny_features["config_path"])
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: search {SEARCH}: trial 0 finished, but its results {lost} are missing (deleted?): restore them, or "
        "give the search another key or num_experiment (a trial is never run twice)"], refused.stderr
    status = run_routine(routine, tiny_features["config_path"], "--status")
    assert f"instance {SEARCH}: trial 0 finished, but its results {lost.name} are missing (deleted?): a run refuses " \
           "until they are restored" in status.stdout, status.stdout
    for trial in repeats:
        if first_of[trial.params["learning_rate"]] == 0:
            assert f"instance {SEARCH + trial.number}: repeat of trial 0 (instance {SEARCH}): the result it stands " \
                   "for is missing (deleted?)" in status.stdout, status.stdout

@pytest.mark.parametrize("strings, message", [
    (['learning_rate = loguniform(0, 0.1)'], "needs LOW < HIGH, LOW > 0"),
    (['learning_rate = uniform(0.1)'], "takes two ends"),
    (['batch_size = choice(16)'], "needs two values or more"),
    (['batch_size = choice(16, 16, 32)'], "lists a value twice"),
    (['num_epochs = intrange(1, 4, step=2)'], "4 is not reached from 1 in steps of 2"),
    (['num_epochs = intrange(1, 3, step=0)'], "intrange(1, 3, step=0) needs LOW < HIGH, step >= 1"),
    (['num_epochs = intrange(1.5, 4)'], "needs finite whole numbers"),
    (['num_epochs = uniform(1, 3)', 'search_trials = 2'], "num_epochs takes whole numbers, and uniform(1, 3) draws"),
    (['learning_rate = loguniform(1e-4, 1e-2)', 'search_sampler = "grid"'], "a grid search needs choice(...)"),
    (['batch_size = choice(16, 32)', 'search_sampler = "grid"', 'search_trials = 3'], "has 2 points"),
    (['batch_size = choice(16, 32)', 'search_sampler = "grid"', 'search_pruner = "median"'], "prunes none"),
    (['batch_size = choice(16, 32)', 'search_sampler = "bayes"', 'search_trials = 2'], "search_sampler = 'bayes'"),
    (['batch_size = choice(16, 32)', 'search_trails = 2'], "unknown search setting 'search_trails'"),
    (['batch_size = choice(16, 32)', 'search_trials = 2', 'search_seed = -1'],
     "search_seed = -1 must be a whole number from 0 to 2**32 - 1"),
    (['architecture = choice("EXAMPLE_model", "EXAMPLE_modl")', 'search_trials = 2'],
     "architecture 'EXAMPLE_modl' (one of its choices) is not a model function of define_models.py: did you mean "
     "EXAMPLE_model"),
    (['batch_size = choice(16, 32)', 'search_trials = 2', 'search_sampler = "random"', 'search_pruner = "none"',
      'search_startup_trials = 3'], "search_startup_trials = 3 has no effect with search_sampler = 'random' and "
                                    "search_pruner = 'none'"),
    (['batch_size = choice(16, 32)', 'search_trials = 2', 'search_sampler = "tpe"', 'search_startup_trials = 5'],
     "search_startup_trials = 5 is not below search_trials = 2: every trial would be random and none pruned"),
    (['batch_size = choice(16, 32)', 'search_sampler = "grid"', 'search_startup_trials = 2'],
     "search_startup_trials = 2 has no effect with search_sampler = 'grid'"),
    (['batch_size = choice(16, 32)'], "a search needs search_trials = N"),
    (['search_trials = 3'], "a search needs at least one distribution"),
    (['batch_size = choice(16, "many")', 'search_trials = 2'], "batch_size"),
    (['learning_rate = loguniform(1e-4, 1e-2)', 'search_trials = 2', 'learning_rate = 0.1'], "assigned twice"),
    (['task_type = choice("classification", "regression")', 'search_trials = 2'], "task_type cannot be searched"),
    (['hidden_units = choice([8], [16])', 'search_trials = 2'], "unknown parameter 'hidden_units'"),
    (['architecture = choice("EXAMPLE_model", "POOLED_STATS_model")', 'channels = choice([8], [16])',
      'search_trials = 2'], "channels is taken by none of the searched architectures"),
])
def test_a_bad_search_string_is_refused_before_anything_runs(tiny_features, tmp_path, strings, message):
    routine = write_routine(tmp_path, {SEARCH: instance("bad", *strings)})
    refused = run_routine(routine, tiny_features["config_path"])
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "experiments").exists()


def test_an_instance_inside_a_searchs_trials_is_refused(tiny_features, tmp_path):
    routine = write_routine(tmp_path, {SEARCH: search_strings('batch_size = choice(16, 32)', trials=4),
                                       SEARCH + 2: instance("inside")})
    refused = run_routine(routine, tiny_features["config_path"])
    assert refused.returncode == 2 and "experiment_dict[12] lies inside search 10's trials (instances 10 to 13)" \
        in refused.stderr, refused.stderr


def test_the_search_example_routine_is_a_search_every_corner_of_which_resolves():
    from parameters import architecture_signatures, resolve_instance
    from plan import parse_searches
    from routine_helpers import REPO
    from search import check_search, corners
    from test_config_and_examples import example_settings
    from utility_functions import load_config
    settings = example_settings(REPO / "xval_routine_search_example.py")
    training, signatures = load_config(REPO / "config.ini")["training"], architecture_signatures()
    searches = parse_searches(settings["experiment_dict"], training, signatures)
    assert list(searches) == [SEARCH] and set(settings["experiment_dict"]) - set(searches)
    search = searches[SEARCH]
    assert search.sampler == "tpe" and search.pruner == "median" and len(corners(search)) >= 4
    assert check_search(search, lambda strings, where: resolve_instance(strings, training, signatures, where),
                        "example") == "classification"


def test_a_searched_architecture_gets_only_the_parameters_it_takes():
    from parameters import architecture_signatures, resolve_instance
    from plan import parse_searches
    from routine_helpers import REPO
    from search import check_search, corners
    from utility_functions import load_config
    training, signatures = load_config(REPO / "config.ini")["training"], architecture_signatures()
    strings = instance("arch", 'architecture = choice("EXAMPLE_model", "POOLED_STATS_model")',
                       'hidden_units = choice([8], [16])', 'dropout = uniform(0.0, 0.5)', 'search_trials = 4')
    search = parse_searches({SEARCH: strings}, training, signatures)[SEARCH]
    seen = set()
    for stored in corners(search):
        names = {text.split("=")[0].strip() for text in search.trial_strings(0, stored)}
        architecture = "EXAMPLE_model" if "filters" in names else "POOLED_STATS_model"
        seen.add(architecture)
        assert ("hidden_units" in names) == (architecture == "POOLED_STATS_model")
        assert {"dense_units", "filters"} <= names or architecture == "POOLED_STATS_model"
        assert "dropout" in names  # both take it
    assert seen == {"EXAMPLE_model", "POOLED_STATS_model"}
    assert check_search(search, lambda strings, where: resolve_instance(strings, training, signatures, where),
                        "test") == "classification"


def test_a_search_over_ids_holding_another_instances_results_is_refused(tiny_features, tmp_path):
    first = write_routine(tmp_path, {SEARCH + 1: instance("hand", "num_epochs = 1")}, name="first.py", num_folds=2)
    assert run_routine(first, tiny_features["config_path"]).returncode == 0
    routine = write_routine(tmp_path, {SEARCH: search_strings('batch_size = choice(16, 32)', trials=3)}, num_folds=2)
    refused = run_routine(routine, tiny_features["config_path"])
    assert refused.returncode == 2 and "search 10: instance 11 (one of its trials' ids) has results of another " \
        "instance" in refused.stderr, refused.stderr
