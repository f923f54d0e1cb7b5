"""config.ini is read as documented, and the shipped example routines are valid against today's defaults."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parameters import architecture_signatures, resolve_instance
from xval_instance import check_settings
from routine_helpers import REPO
from utility_functions import CONFIG_SCHEMA, XvalError, load_config

EXAMPLES = ["xval_routine_example.py", "xval_routine_regression_example.py"]


def test_the_shipped_config_has_every_key_with_the_right_type():
    import configparser

    from executors import executor_sections
    sections = executor_sections()
    config = load_config(REPO / "config.ini", sections)
    expected = {**{section: set(keys) for section, keys in CONFIG_SCHEMA.items()},
                **{section: set(keys) for section, keys in sections.items()}}
    assert {section: set(keys) for section, keys in config.items()} == expected
    shipped = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    shipped.read(REPO / "config.ini", encoding="utf-8")
    assert {section: set(shipped[section]) for section in shipped.sections()} == expected
    assert config["preprocessing"]["sample_rate"] == 16000
    assert isinstance(config["training"]["early_stopping"], bool)


def test_an_executor_section_may_be_missing_and_takes_the_shipped_values(tmp_path):
    from executors import executor_sections
    sections = executor_sections()
    text = (REPO / "config.ini").read_text()
    lean = tmp_path / "config.ini"
    lean.write_text(text[:text.index("[slurm]")])
    assert load_config(lean, sections)["slurm"] == load_config(REPO / "config.ini", sections)["slurm"]


def test_a_config_saved_by_windows_notepad_is_read(tmp_path):
    saved = tmp_path / "config.ini"  # UTF-8 with a byte order mark, and CRLF line ends
    saved.write_bytes(b"\xef\xbb\xbf" + (REPO / "config.ini").read_text().replace("\n", "\r\n").encode())
    plain = tmp_path / "plain.ini"
    plain.write_text((REPO / "config.ini").read_text())
    assert load_config(saved) == load_config(plain)  # relative paths are taken from the same folder


def test_relative_paths_are_taken_from_the_config_folder_not_the_current_directory(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "config.ini").write_text((REPO / "config.ini").read_text())
    program = "from utility_functions import load_config; print(load_config()['paths']['features_folder'])"
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path,
                               env=dict(os.environ, XVAL_CONFIG=str(folder / "config.ini"), PYTHONPATH=str(REPO)))
    assert Path(completed.stdout.strip()) == folder / "data" / "features"


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text.replace("[folds]", "[fold]"), "section [folds] is missing"),
    (lambda text: text.replace("hop_length = 512", "hop_length = 512.5"),
     "[features] hop_length = '512.5' is not a whole number"),
    (lambda text: text.replace("early_stopping = true", "early_stopping = sometimes"), "is not true or false"),
    (lambda text: text.replace("validation_share = 0.2", "validation_share = 1.5"), "must be between 0 and 1"),
    (lambda text: text.replace("batch_size = 32", "batch_size = 0"), "must be greater than 0"),
    (lambda text: text.replace("folds_seed = 1", "folds_seed = -1"), "[folds] folds_seed = -1 must be between 0 and"),
    (lambda text: text.replace("learning_rate = 0.001", "learning_rate = nan"),
     "[training] learning_rate = 'nan' is not a finite number"),
    (lambda text: text.replace("fmin = 0.0", "fmin = -inf"), "[features] fmin = '-inf' is not a finite number"),
    (lambda text: text.replace("type = mel", "type = chroma"), "is not one of stft, mfcc, mel"),
    (lambda text: text + "\n[paths]\nx = 1\n", "cannot be parsed"),
    (lambda text: text.replace("patience = 15", "patience = 15\npatients = 3"),
     "[training] patients is not a setting xval reads: did you mean patience?"),
    (lambda text: text.replace("[folds]", "[folds]\nfold_seed = 3"), "[folds] fold_seed is not a setting xval reads"),
])
def test_config_mistakes_name_the_file_section_and_key(tmp_path, edit, expected):
    path = tmp_path / "config.ini"
    path.write_text(edit((REPO / "config.ini").read_text()))
    with pytest.raises(XvalError) as refusal:
        load_config(path)
    assert expected in str(refusal.value) and str(path) in str(refusal.value)


def example_settings(path):
    """Execute a routine file's assignments (not its import, not its run_routine call) in an explicit dict."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    statements = [node for node in tree.body if isinstance(node, ast.Assign)]
    namespace = {}
    exec(compile(ast.Module(body=statements, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_routines_resolve_every_instance_against_the_defaults(name):
    settings = example_settings(REPO / name)
    config = load_config(REPO / "config.ini")
    signatures = architecture_signatures()
    resolved = [resolve_instance(strings, config["training"], signatures, f"{name} [{key}]")
                for key, strings in settings["experiment_dict"].items()]
    assert len(resolved) >= 2
    task_types = {parameters["task_type"] for parameters in resolved}
    assert task_types == ({"classification"} if name == "xval_routine_example.py" else {"regression"})
    if name == "xval_routine_example.py":
        assert len(resolved) >= 3
    differing = {key for key in resolved[0] if len({repr(parameters.get(key)) for parameters in resolved}) > 1}
    assert differing - {"comment_1", "comment_2"}, "the instances must differ in something worth comparing"
    check_settings({key: settings[key] for key in ("description", "gpu_ID", "dataset", "num_experiment",
                                                      "num_folds", "experiment_folder", "overwrite_results",
                                                      "debug_mode", "experiment_dict")})
