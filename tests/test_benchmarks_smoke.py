"""The benchmarks run: benchmarks/run.py --smoke (every script in its tiny mode) writes a well-formed table.

Only the output is checked, never a timing or memory figure against a threshold (those depend on the machine and
its load; `python3 benchmarks/run.py` measures them). Two run.py processes run at once, each in its own temporary
workspace: preprocessing + overhead + parallel, and memory + tweaks.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

REPO = Path(__file__).resolve().parents[1]
# parallel.py's peer needs scikeras (requirements-benchmarks.txt, which .ci/run installs); without it that
# benchmark is left out and its test skipped, saying why; under CI=true a missing scikeras fails instead
PEER_MISSING = importlib.util.find_spec("scikeras") is None
PEER_REASON = "scikeras is not installed (benchmarks/parallel.py's peer): python3 -m pip install -r " \
              "requirements-benchmarks.txt"
if PEER_MISSING and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI=true but {PEER_REASON}")
GROUPS = {"timing": ("preprocessing", "overhead") + (() if PEER_MISSING else ("parallel",)),
          "memory": ("memory", "tweaks")}
TIMEOUT_SECONDS = 600
TWEAKS = ("a_mallopt", "c_os_exit", "d_sparse_mel", "e_early_server", "f_fold_imports")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{benchmark: its result} and {group: (table rows, markdown text, printed output)} of the smoke runs."""
    root, started = tmp_path_factory.mktemp("benchmarks"), {}
    for group, names in GROUPS.items():
        command = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--workdir", str(root / group),
                   "--output", str(root / f"{group}.json"), "--markdown", str(root / f"{group}.md"), "--only", *names]
        started[group] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          cwd=str(REPO))
    results, tables = {}, {}
    for group, process in started.items():
        output = process.communicate(timeout=TIMEOUT_SECONDS)[0]
        assert process.returncode == 0, f"run.py --smoke --only {' '.join(GROUPS[group])} failed:\n{output[-4000:]}"
        report = json.loads((root / f"{group}.json").read_text(encoding="utf-8"))
        results.update(report["results"])
        tables[group] = (report["table"], (root / f"{group}.md").read_text(encoding="utf-8"), output)
    return results, tables


def numbers_in(value):
    """Every int or float inside a JSON value (booleans excluded)."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def figures_of(results, benchmark):
    """The figures of one benchmark, after checking they are all finite numbers."""
    figures = results[benchmark]["figures"]
    assert numbers_in(figures) and all(math.isfinite(number) for number in numbers_in(figures))
    return figures


def labels(results, benchmark):
    """The figure column of one benchmark's rows."""
    return [row["figure"] for row in results[benchmark]["rows"]]


@pytest.mark.parametrize("script", ["run.py", "preprocessing.py", "overhead.py", "memory.py", "parallel.py",
                                    "tweaks.py", "scale.py"])
def test_every_script_has_a_command_line(script):
    completed = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                               text=True, cwd=str(REPO), timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "--smoke" in completed.stdout


def test_tables_are_printed_and_written(reports):
    results, tables = reports
    for group, (table, markdown, output) in tables.items():
        assert {row["benchmark"] for row in table} == set(GROUPS[group])
        assert all(set(row) == {"benchmark", "figure", "value", "target", "met"} for row in table)
        assert markdown.splitlines()[0] == "| benchmark | figure | value | target | met |"
        assert len(markdown.splitlines()) == len(table) + 2
        assert all(row["figure"] in output for row in table)
    for name, result in results.items():
        assert 0 <= result["other_load"] <= 1
        assert labels(results, name)[-1].startswith("CPU used by other processes")
        assert all(row["met"] in ("", "yes", "NO") for row in result["rows"])


def test_overhead(reports):
    results, _ = reports
    figures = figures_of(results, "overhead")
    assert {"ratio xval / plain", "fixed cost per fold: (xval wall - fit) / folds (s)"} <= set(labels(results,
                                                                                                    "overhead"))
    assert figures["wall"]["xval"] > 0 and figures["wall"]["plain"] > 0 and figures["wall"]["eval"] > 0
    assert figures["ratio"] == pytest.approx(figures["wall"]["xval"] / figures["wall"]["plain"])
    assert figures["per_fold"]["fold: fit"] > 0 and figures["plain_fit"] > 0
    assert figures["backends"] == ["tensorflow"]
    # one repetition: the parts read from the launch record and the fold results add up to the routine's wall time
    assert sum(figures["per_fold"].values()) * figures["folds"] == pytest.approx(figures["wall"]["xval"])


def test_overhead_on_jax_measures_folds_that_ran_on_jax(tmp_path):
    """overhead.py --backend jax: the JAX fixed cost per fold of issue 24, from folds that really ran on JAX."""
    require("jax is not installed" if importlib.util.find_spec("jax") is None else None,
            "python3 -m pip install -r requirements-backends.txt")
    subprocess.run([sys.executable, "-c", f"import common; common.make_workspace({str(tmp_path / 'ws')!r}, True)"],
                   cwd=str(REPO / "benchmarks"), check=True, capture_output=True, timeout=TIMEOUT_SECONDS)
    completed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "overhead.py"), str(tmp_path / "ws"),
                                str(tmp_path / "jax.json"), "--smoke", "--backend", "jax", "--epochs", "2"],
                               capture_output=True, text=True, cwd=str(REPO), timeout=TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads((tmp_path / "jax.json").read_text(encoding="utf-8"))
    assert result["figures"]["backends"] == ["jax"]
    assert result["figures"]["fixed_per_fold"] > 0 and math.isfinite(result["figures"]["fixed_per_fold"])
    assert "jax" in result["rows"][0]["figure"] and "x 2 epochs" in result["rows"][0]["figure"]
    fixed = next(row for row in result["rows"] if row["figure"].startswith("fixed cost per fold"))
    assert fixed["target"] == "<= 1.5"  # issue 24's target for JAX, not the 3 s of every backend
    histories = [json.loads(path.read_text(encoding="utf-8"))["history"]["loss"]
                 for path in (tmp_path / "ws" / "overhead_jax").glob("experiment_*/results/folds/*.json")]
    assert histories and all(len(loss) == 2 for loss in histories)  # --epochs reached the folds
    assert (tmp_path / "ws" / "overhead_jax").is_dir()


def test_preprocessing(reports):
    results, _ = reports
    figures = figures_of(results, "preprocessing")
    assert figures["allclose"] is True and figures["clips"] == 56
    assert figures["pipeline_wall"] > 0 and figures["naive_wall"] > 0
    assert "speed-up naive / pipeline" in labels(results, "preprocessing")


def test_memory(reports):
    results, _ = reports
    figures = figures_of(results, "memory")
    assert figures["routine_peak_end_mib"] >= figures["routine_peak_after_first_mib"] > 0
    assert figures["fold_peak_mib"] > 0 and figures["baseline_mib"] > 0 and figures["arrays_mib"] > 0
    assert "fold: (peak - baseline) / arrays" in labels(results, "memory")


@pytest.mark.skipif(PEER_MISSING, reason=PEER_REASON)
def test_parallel(reports):
    results, _ = reports
    figures = figures_of(results, "parallel")
    assert {"speed-up of 2 workers: 1 worker / 2 workers", "ratio xval / peer, 1 worker vs n_jobs=1",
            "ratio xval / peer, 2 workers vs n_jobs=2"} <= set(labels(results, "parallel"))
    assert all(figures["wall"][kind] > 0 for kind in ("one", "two", "peer1", "peer2"))
    assert figures["speedup"] == pytest.approx(figures["wall"]["one"] / figures["wall"]["two"])
    assert figures["ratio"]["one"] == pytest.approx(figures["wall"]["one"] / figures["wall"]["peer1"])
    assert figures["ratio"]["two"] == pytest.approx(figures["wall"]["two"] / figures["wall"]["peer2"])
    # --smoke machines may have one core; otherwise two workers share them: cores // 2 threads per fold each
    assert figures["threads_per_fold"]["two"] == max(1, figures["threads_per_fold"]["one"] // 2)
    assert figures["fit"]["one"] > 0 and figures["fit"]["two"] > 0 and figures["peer_fit"]["peer2"] > 0
    # both sides cross-validated the same folds: a test score per fold of every instance
    assert sum(map(len, figures["peer_test_scores"])) == sum(map(len, figures["xval_test_scores"])) == figures["folds"]


def test_tweaks(reports):
    results, _ = reports
    figures = figures_of(results, "tweaks")
    assert set(figures) == {"preprocessing", "features", "routine", "server"}
    assert all("on" in group for group in figures.values())
    for tweak in TWEAKS:  # measured on against off, or reported as gone from the product
        assert any(tweak in label for label in labels(results, "tweaks"))


def own_smoke_run(tmp_path, name):
    """{benchmark: result} of run.py --smoke --only name in its own workspace, tmp_path / "work"."""
    command = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--workdir", str(tmp_path / "work"),
               "--output", str(tmp_path / f"{name}_run.json"), "--markdown", str(tmp_path / f"{name}.md"),
               "--only", name]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO), timeout=TIMEOUT_SECONDS)
    assert completed.returncode == 0, f"run.py --smoke --only {name} failed:\n{completed.stdout[-4000:]}"
    return json.loads((tmp_path / f"{name}_run.json").read_text(encoding="utf-8"))["results"]


@pytest.mark.skipif(PEER_MISSING, reason=PEER_REASON)
def test_search(tmp_path):
    """benchmarks/search_budget.py (named only, like tweaks.py; its peer needs scikeras) in its own smoke run: the
    hand grid, xval's search and the Optuna + scikeras peer, counted and compared."""
    script = REPO / "benchmarks" / "search_budget.py"
    helped = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=str(REPO),
                            timeout=60)
    assert helped.returncode == 0 and "--smoke" in helped.stdout, helped.stderr
    results = own_smoke_run(tmp_path, "search_budget")
    figures = figures_of(results, "search_budget")
    assert {"search fold trainings / grid's", "search's best validation UAR - grid's best",
            "wall: grid / xval search / peer (s)"} <= set(labels(results, "search_budget"))
    assert labels(results, "search_budget")[-1].startswith("CPU used by other processes")
    assert all(figures["wall"][side] > 0 for side in ("grid", "search", "peer"))
    trials, folds = figures["search_trials"], figures["folds"]
    counted = figures["fold_trainings"]
    # every grid point trains every fold, the peer every trial's every fold; pruned trials train fewer
    assert counted["grid"] == figures["grid_points"] * folds and counted["peer"] == trials * folds
    assert trials <= counted["search"] <= trials * folds and figures["search"]["trials"] == trials
    assert figures["share"] == pytest.approx(counted["search"] / counted["grid"])
    assert sum(figures["search"]["statuses"].values()) == trials and len(figures["peer_trials"]) == trials
    # a search trial on a grid point trains what the grid's instance trained: the same numbers
    compared = figures["search"]
    assert compared["folds_equal_to_grid"] == compared["folds_compared_with_grid"] == counted["search"]
    assert figures["reached"] == (figures["best_val"]["search"] >= figures["best_val"]["grid"])


def test_scale(tmp_path):
    """benchmarks/scale.py (named only) in its own smoke run: the demo corpus repeated 1x and 2x under new speakers,
    preprocessed and cross-validated with 1 and 2 workers, every figure written; then --also redraws the growth
    curves from that result without running anything."""
    results = own_smoke_run(tmp_path, "scale")
    factors = figures_of(results, "scale")["factors"]
    assert [r["factor"] for r in factors] == [1, 2] and factors[1]["clips"] == 2 * factors[0]["clips"]
    for r in factors:
        assert r["features_gib"] > 0 and r["preprocessing_pss_gib"] > 0 and set(r["routine"]) == {"1 worker",
                                                                                                 "2 workers"}
        assert all(run["wall"] > 0 and run["pss_gib"] > 0 and run["phases"]["fit"] > 0 for run in
                   r["routine"].values())
    assert any(label.startswith("2x (") for label in labels(results, "scale"))
    redraw = [sys.executable, str(REPO / "benchmarks" / "scale.py"), str(tmp_path / "work"),
              str(tmp_path / "again.json"), "--factors", "--also", str(tmp_path / "work" / "scale.json"), "--png",
              str(tmp_path / "g.png")]
    completed = subprocess.run(redraw, capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert completed.returncode == 0, completed.stderr
    again = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert again["figures"]["factors"] == factors
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
