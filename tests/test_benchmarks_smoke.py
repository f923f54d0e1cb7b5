"""The benchmarks run: every script of benchmarks/ in its tiny --smoke mode, through benchmarks/run.py.

Only that the scripts run and write well-formed results is checked here, never a timing or memory figure (those
depend on the machine and its load; `python3 benchmarks/run.py` measures them). Two run.py processes run at once,
each in its own temporary workspace, to keep this under a minute: preprocessing + overhead, and memory.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
COMMAND_LINE_SCRIPTS = ("run.py", "overhead.py", "preprocessing_throughput.py", "memory.py")
GROUPS = {"timing": ("preprocessing", "overhead"), "memory": ("memory",)}
TABLE_KEYS = {"benchmark", "figure", "value", "target", "met"}
TIMEOUT_SECONDS = 400


def environment():
    """This process's environment without the benchmarks' tracing switch (the scripts set what they need)."""
    return {key: value for key, value in os.environ.items() if key != "XVAL_BENCH_TRACE"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run `run.py --smoke --only ...` for each group at once; returns {group: {"report", "output", "markdown"}}."""
    root = tmp_path_factory.mktemp("benchmarks")
    started = {}
    for group, names in GROUPS.items():
        folder = root / group
        folder.mkdir()
        command = [sys.executable, str(BENCHMARKS / "run.py"), "--smoke", "--workdir", str(folder / "work"),
                   "--output", str(folder / "latest.json"), "--markdown", str(folder / "latest.md"), "--only", *names]
        log = open(folder / "run.log", "wb")
        started[group] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                           env=environment()), log, folder)
    runs = {}
    for group, (process, log, folder) in started.items():
        try:
            process.wait(timeout=TIMEOUT_SECONDS)
        finally:
            log.close()
        output = (folder / "run.log").read_text(encoding="utf-8", errors="replace")
        assert process.returncode == 0, f"run.py --smoke ({group}) failed:\n{output[-4000:]}"
        runs[group] = {"report": json.loads((folder / "latest.json").read_text(encoding="utf-8")),
                       "output": output, "markdown": (folder / "latest.md").read_text(encoding="utf-8")}
    return runs


def numbers_in(value):
    """Every int or float inside a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return []


@pytest.mark.parametrize("script", COMMAND_LINE_SCRIPTS)
def test_every_script_has_a_command_line(script):
    completed = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                               cwd=str(REPO), env=environment(), timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "--smoke" in completed.stdout


def test_reports_are_well_formed(smoke):
    for group, run in smoke.items():
        report = run["report"]
        assert report["smoke"] is True
        assert set(report["results"]) == set(GROUPS[group])
        assert {"nproc", "cpu_model", "ram_gib", "python", "tensorflow"} <= set(report["machine"])
        assert report["table"] and all(set(row) == TABLE_KEYS for row in report["table"])
        assert {row["benchmark"] for row in report["table"]} == set(GROUPS[group])
        assert all(math.isfinite(number) for number in numbers_in(report["results"]))
        for result in report["results"].values():
            assert 0 <= result["other_load"]["foreign_share_of_capacity"] <= 1


def test_tables_are_printed_and_written_as_markdown(smoke):
    for run in smoke.values():
        assert "benchmark" in run["output"] and "figure" in run["output"]
        lines = run["markdown"].splitlines()
        assert lines[0].startswith("| benchmark | figure |")
        assert len(lines) == len(run["report"]["table"]) + 2


def test_overhead_result(smoke):
    result = smoke["timing"]["report"]["results"]["overhead"]
    assert result["folds_total"] == 2 and result["size"]["epochs"] == 1
    assert result["order"] == ["xval", "plain", "plain_eval"]
    assert result["plain_evaluating_wall_seconds"] > 0 and result["plain_evaluate_per_fold"] > 0
    assert result["xval_wall_seconds"] > 0 and result["plain_wall_seconds"] > 0 and result["xval_fit_seconds"] > 0
    assert result["wall_ratio"] == pytest.approx(result["xval_wall_seconds"] / result["plain_wall_seconds"],
                                                 rel=1e-2)
    parts = {part["key"]: part for part in result["breakdown"]}
    assert {"fit", "predict_metrics", "spreadsheet", "server_imports", "parent_imports"} <= set(parts)
    assert all(part["kind"] in ("once", "per fold") for part in parts.values())
    # the breakdown accounts for the whole wall time of the traced run (an identity of the analysis)
    total = sum(part["seconds_total"] for part in parts.values()) + result["unattributed_seconds"]
    assert total == pytest.approx(result["xval_wall_seconds"], abs=0.05)
    assert isinstance(result["targets"]["ratio_met"], bool) and isinstance(result["targets"]["fixed_met"], bool)


def test_preprocessing_result(smoke):
    result = smoke["timing"]["report"]["results"]["preprocessing"]
    assert result["output_check"]["allclose"] is True
    assert result["clips"] == 56 and result["audio_seconds"] > 0
    for side in ("pipeline", "naive", "pipeline_warm", "naive_warm"):
        assert result[side]["clips_per_second"] > 0 and result[side]["audio_seconds_per_second"] > 0
    assert isinstance(result["targets"]["speedup_met"], bool)


def test_memory_result(smoke):
    result = smoke["memory"]["report"]["results"]["memory"]
    parent, fold = result["parent"], result["fold"]
    assert len(parent["after_each_instance_mib"]) == result["size"]["instances"] == 2
    assert parent["samples"] > 0 and parent["peak_at_end_mib"] >= parent["peak_after_first_instance_mib"] > 0
    assert fold["standalone_peak_mib"] > 0 and fold["baseline_mib"] > 0 and fold["arrays_mib"] > 0
    assert fold["plain_keras_peak_mib"] > 0 and fold["forked_pss_mib_median"] > 0
    assert isinstance(fold["met"], bool) and isinstance(parent["growth_met"], bool)


def test_trace_hook_does_nothing_unless_asked():
    code = ("import xval_instance, training; "
            "print(any(getattr(getattr(m, n), '__xval_traced__', False) for m in (xval_instance, training) "
            "for n in dir(m)))")
    env = dict(environment(), PYTHONPATH=os.pathsep.join([str(BENCHMARKS / "tracehook"), str(REPO)]))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), env=env,
                               timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"
