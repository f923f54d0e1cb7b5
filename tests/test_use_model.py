"""use_model.py: the final model of the instance chosen on validation, and predictions of new audio files that
equal the predictions the folds saved (so the features at prediction time are the features at training time)."""
import json
import shutil

import numpy as np
import pytest

from routine_helpers import REPO, clip_files_of, instance, read_csv, run_routine, use_model, write_routine
from utility_functions import load_config


@pytest.fixture(scope="module")
def experiment(tiny_features, tmp_path_factory):
    folder = tmp_path_factory.mktemp("use_model")
    routine = write_routine(folder, {1: instance("a", "num_epochs = 3", "early_stopping = False"),
                                     2: instance("b", "num_epochs = 2", "learning_rate = 0.01")}, num_folds=2)
    completed = run_routine(routine, tiny_features["config_path"])
    assert completed.returncode == 0, completed.stderr
    config = load_config(tiny_features["config_path"])
    metadata = json.loads((config["paths"]["features_folder"] / "tiny_metadata.json").read_text())
    return {"dir": folder / "experiments" / "experiment_1", "folder": folder, "metadata": metadata,
            "config": tiny_features["config_path"]}


def saved_results(experiment, run):
    return json.loads((experiment["dir"] / "results" / f"results_tiny_exp1_run{run}.json").read_text())


def test_a_fold_model_predicts_its_test_clips_as_the_fold_saved_them(experiment, tmp_path):
    document = saved_results(experiment, 1)
    for fold in document["folds"]:
        files = clip_files_of(experiment["metadata"], fold["test_items"])
        out = tmp_path / f"fold{fold['fold']}.csv"
        completed = use_model("predict", experiment["dir"] / fold["model_file"], *files, "--out", out,
                              config_path=experiment["config"])
        assert completed.returncode == 0, completed.stderr
        rows = read_csv(out)
        assert [row["file"] for row in rows] == [str(path) for path in files]
        names = document["class_names"]
        assert [row["prediction"] for row in rows] == [names[index] for index in fold["predictions"]["test"]["y_pred"]]
        probabilities = np.array([[float(row[f"p_{name}"]) for name in names] for row in rows])
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def test_a_fold_model_alone_describes_itself(experiment, tmp_path):
    # copied away from its experiment: its features, classes and normalisation come from the model file itself
    document = saved_results(experiment, 2)
    fold = document["folds"][1]
    alone = tmp_path / "somewhere else" / "model.hdf5"
    alone.parent.mkdir()
    shutil.copy(experiment["dir"] / fold["model_file"], alone)
    files = clip_files_of(experiment["metadata"], fold["test_items"])
    out = tmp_path / "alone.csv"
    completed = use_model("predict", alone, *files, "--out", out, config_path=experiment["config"])
    assert completed.returncode == 0, completed.stderr
    names = document["class_names"]
    assert [row["prediction"] for row in read_csv(out)] == [names[i] for i in fold["predictions"]["test"]["y_pred"]]
    from training import read_card
    card = read_card(alone)
    assert card["parameters"] == document["parameters"] and card["class_names"] == names
    assert card["features"] == document["features"] and card["normalisation"] == fold["normalisation"]
    assert card["items"]["test"] == fold["test_items"] and card["dataset_fingerprint"] == document[
        "dataset_fingerprint"]


def test_the_final_model_of_the_instance_chosen_on_validation(experiment, tmp_path):
    summary = json.loads((experiment["dir"] / "tiny_exp1_summary.json").read_text())
    chosen = summary["task_types"]["classification"]["chosen_on_validation"]["instance"]
    completed = use_model("final", experiment["dir"], "--instance", "best", config_path=experiment["config"])
    assert completed.returncode == 0, completed.stderr
    stem = f"model_tiny_exp1_run{chosen}_final"
    model, card_path = experiment["dir"] / "final" / f"{stem}.hdf5", experiment["dir"] / "final" / f"{stem}_card.json"
    card = json.loads(card_path.read_text())
    document = saved_results(experiment, chosen)
    best_epochs = [fold["best_epoch"] for fold in document["folds"]]
    assert card["trained_on"]["epochs"] == int(np.floor(np.median(best_epochs) + 0.5))
    assert card["trained_on"]["items"] == sorted(experiment["metadata"]["items"])
    assert card["parameters"] == document["parameters"] and card["class_names"] == document["class_names"]
    assert card["dataset"] == "tiny" and card["dataset_fingerprint"] == document["dataset_fingerprint"]
    assert card["features"]["feature_settings"]["type"] == "mel" and card["features"]["sample_rate"] == 16000
    assert card["cross_validation"]["routine"]["chosen_on_validation"]["instance"] == chosen
    assert "selection_aware_test" in card["cross_validation"]["routine"] and card["code"]["git_commit"]
    result = json.loads((experiment["dir"] / "final" / f"{stem}_result.json").read_text())
    assert result["train_items"] == sorted(experiment["metadata"]["items"]) and result["test_items"] == []
    assert result["epochs_run"] == card["trained_on"]["epochs"]

    again = use_model("final", experiment["dir"], config_path=experiment["config"])
    assert again.returncode == 2 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1

    new_audio = tmp_path / "new recordings"
    new_audio.mkdir()
    for path in clip_files_of(experiment["metadata"], ["01", "02"])[:5]:
        shutil.copy(path, new_audio / path.name)
    (new_audio / "broken.wav").write_bytes(b"RIFF, but not audio")
    out = tmp_path / "predictions.csv"
    predicted = use_model("predict", model, new_audio, "--out", out, config_path=experiment["config"])
    assert predicted.returncode == 0, predicted.stderr
    rows = read_csv(out)
    assert len(rows) == 5 and all(row["prediction"] in card["class_names"] for row in rows)
    assert all(row["model"] == model.name for row in rows)
    assert "skipped 1 files" in predicted.stdout and "broken.wav" in predicted.stdout

    # device 99: no machine has it; the final model still trains, on the CPU, and says so in one line
    on_gpu = use_model("final", experiment["dir"], "--overwrite", "--gpu", "99", config_path=experiment["config"])
    assert on_gpu.returncode == 0, on_gpu.stderr
    assert [line for line in on_gpu.stderr.splitlines() if "sees no GPU" in line] == [
        "warning: --gpu 99 was asked for, but tensorflow sees no GPU there, so training runs on the CPU: pass "
        "--gpu -1, or check the GPU (nvidia-smi) and the CUDA build of tensorflow"], on_gpu.stderr


def test_an_instance_predicts_with_the_mean_of_its_fold_models(experiment, tmp_path):
    files = clip_files_of(experiment["metadata"], ["03"])
    out = tmp_path / "mean.csv"
    completed = use_model("predict", experiment["dir"], *files, "--instance", "2", "--out", out,
                          config_path=experiment["config"])
    assert completed.returncode == 0, completed.stderr
    import keras
    document = saved_results(experiment, 2)
    from feat_analysis import clip_signals
    import feat_analysis
    features = experiment["metadata"]
    expected = 0
    for fold in document["folds"]:
        model = keras.models.load_model(experiment["dir"] / fold["model_file"])
        x = np.concatenate([feat_analysis.extract_features_batch(clip_signals(path, features["length"])[0], 16000,
                                                                 features["feature_settings"]) for path in files])
        expected = expected + model.predict(x, verbose=0)
    rows = read_csv(out)
    assert [row["prediction"] for row in rows] == [document["class_names"][i] for i in expected.argmax(axis=1)]


def test_a_file_named_twice_is_predicted_once(experiment, tmp_path):
    files = clip_files_of(experiment["metadata"], ["03"])[:2]
    link = tmp_path / "same.wav"
    link.symlink_to(files[0])
    out = tmp_path / "once.csv"
    fold_model = experiment["dir"] / "models" / "model_tiny_exp1_run1_fold1.hdf5"
    completed = use_model("predict", fold_model, files[0], files[1], files[0], link, "--out", out,
                          config_path=experiment["config"])
    assert completed.returncode == 0, completed.stderr
    assert f"predicted 2 files with {fold_model.name}" in completed.stdout
    assert [list(row.values())[0] for row in read_csv(out)] == [str(files[0]), str(files[1])]


@pytest.mark.parametrize("case", ["no-audio", "missing-model", "no-card", "incomplete", "instance-with-a-file",
                                  "out-is-an-input", "instance-not-a-number"])
def test_bad_inputs_are_one_line(experiment, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not audio")
    some_audio = clip_files_of(experiment["metadata"], ["01"])[:1]
    fold_model = experiment["dir"] / "models" / "model_tiny_exp1_run1_fold1.hdf5"
    if case == "no-audio":
        arguments, words = ["predict", fold_model, empty], "no audio files"
    elif case == "instance-with-a-file":
        arguments, words = ["predict", fold_model, *some_audio, "--instance", "2"], "--instance only acts with an"
    elif case == "missing-model":
        arguments, words = ["predict", tmp_path / "nothing.hdf5", *some_audio], "does not exist"
    elif case == "instance-not-a-number":  # int() would read 1_0 as instance 10
        arguments, words = ["final", experiment["dir"], "--instance", "1_0"], "--instance '1_0' must be an instance"
    elif case == "out-is-an-input":  # a slip that would have written the CSV over the user's recording
        some_audio = [tmp_path / "recording.wav"]
        shutil.copy(clip_files_of(experiment["metadata"], ["01"])[0], some_audio[0])
        arguments, words = ["predict", fold_model, *some_audio, "--out", some_audio[0]], "is not a .csv file"
    elif case == "no-card":  # a fold model saved by main at 167406f, before models carried their card
        shutil.copy(REPO / "tests" / "fixtures" / "v167406f" / "experiment_1" / "models" /
                    "model_fixture_exp1_run1_fold1.hdf5", tmp_path / "copied.hdf5")
        arguments, words = ["predict", tmp_path / "copied.hdf5", *some_audio], "carries no card"
    else:
        unfinished = tmp_path / "copy" / "experiment_1"  # its number stays: the views skip another experiment's files
        shutil.copytree(experiment["dir"], unfinished)
        result = unfinished / "results" / "results_tiny_exp1_run1.json"
        result.write_text(result.read_text().replace('"status": "complete"', '"status": "incomplete"'))
        arguments, words = ["final", unfinished, "--instance", "1"], "instance 1 is incomplete"
    before = {path: path.read_bytes() for path in some_audio}
    completed = use_model(*arguments, config_path=experiment["config"])
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("error: ") and completed.stderr.count("\n") == 1 and words in completed.stderr
    assert {path: path.read_bytes() for path in some_audio} == before


def test_best_on_an_experiment_whose_folds_json_changed_names_the_split(experiment, tmp_path):
    edited = tmp_path / "copy" / "experiment_1"
    shutil.copytree(experiment["dir"], edited)
    split = json.loads((edited / "folds.json").read_text())
    fold = split["folds"][0]
    fold["train_items"][0], fold["val_items"][0] = fold["val_items"][0], fold["train_items"][0]
    (edited / "folds.json").write_text(json.dumps(split))
    completed = use_model("final", edited, config_path=experiment["config"])
    assert completed.returncode == 2, completed.stdout + completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "trained on another split than its folds.json" in last, completed.stderr
