"""Tweaks: the performance tweaks of the product, each measured on against off.

    python3 benchmarks/tweaks.py WORKDIR OUT.json [--smoke]

Copies the project's top-level files to /tmp/xval_tweaks/on, and once more per tweak with that tweak turned off
by a text patch (the product files are never touched). Then, per repetition and in rotating order, every copy
runs the measurement where its tweak matters:
  preprocessing  the whole `preprocessing_ravdess.py --demo --force --jobs 2` process (tweaks a, b, c, d);
  features       the feature time of the same clips in one process, one BLAS thread as in a worker, and whether
                 the features change with two BLAS threads (d);
  routine        a small routine's wall time, 1 instance x 4 folds x 1 epoch (c, e);
  server         a fold server's start, `training.py --serve` until it reads jobs, on JAX where it is installed,
                 else TensorFlow (f).
Each group starts with one round that is not counted (the first runs find colder caches). Saved = off - on
within each repetition: median, range and count. About 8.5 minutes on 2 cores.
"""
import importlib.util
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
import overhead
import preprocessing

PATCHES = {  # tweak: [(regular expression in the product's .py files, replacement turning the tweak off)]
    "a_mallopt": [(r"libc\.mallopt\(", "(lambda *_: 0)(")],
    "c_os_exit": [(r"(?m)^    os\._exit\(0\)", "    sys.exit(0)"),  # preprocessing_ravdess.py's last line
                  (r"(?m)^        os\._exit\(code\)", "        sys.exit(code)")],  # training.py --serve's end
    "d_sparse_mel": [(r"scipy\.sparse\.csr_array\((mel_filters\([^()]*\))\.astype\(np\.float64\)\)", r"\1"),
                     (r"\.T\.astype\(np\.float64\)", ".T")],
    "e_early_server": [(r"executor\.warm_up\(config\[\"training\"\]\[\"backend\"\]\)", "pass"),  # servers early
                       (r"import results_to_excel  # noqa: F401", "pass  # noqa: F401")],
    "f_fold_imports": [(r"sys\.modules\.update\(dict\.fromkeys\(hidden\)\)", "pass")],  # training.UNUSED_BY_FOLDS
}
GROUPS = {"preprocessing": ("on", "a_mallopt", "c_os_exit", "d_sparse_mel"),
          "routine": ("on", "c_os_exit", "e_early_server"), "server": ("on", "f_fold_imports")}
FIGURE = {"preprocessing": ("seconds", "s"), "routine": ("seconds", "s"), "server": ("seconds", "s"),
          "features": ("ms_per_clip", "ms a clip")}
REPS, FEATURE_CLIPS = {False: 7, True: 1}, {False: 480, True: 16}  # by --smoke


def make_copies(root):
    """The 'on' copy and one copy per tweak turned off; returns {name: folder} of those whose patches applied."""
    shutil.rmtree(root, ignore_errors=True)
    copies = {}
    for name in ("on", *PATCHES):
        folder = root / name
        folder.mkdir(parents=True)
        for path in [*common.REPO.glob("*.py"), common.REPO / "config.ini"]:
            shutil.copy2(path, folder)
        found = [0] * len(PATCHES.get(name, ()))
        for path in folder.glob("*.py"):
            text = path.read_text(encoding="utf-8")
            for index, (pattern, replacement) in enumerate(PATCHES.get(name, ())):
                text, count = re.subn(pattern, replacement, text)
                found[index] += count
            path.write_text(text, encoding="utf-8")
        if all(found):
            copies[name] = folder
    return copies


def server_start(copy, ws):
    """Seconds from starting the copy's fold server (training.py --serve) to its ready line: {'seconds', 'backend'}
    (JAX where it is installed, else TensorFlow)."""
    from launchers import READY_LINE, SERVE_FLAG  # the project, importable once common.start has run
    backend = "jax" if importlib.util.find_spec("jax") else "tensorflow"
    started = time.perf_counter()
    with subprocess.Popen([sys.executable, str(copy / "training.py"), SERVE_FLAG], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=copy,
                          env=dict(common.environment(ws, copy), KERAS_BACKEND=backend)) as server:
        ready = server.stdout.readline()
        seconds = time.perf_counter() - started
        server.stdin.close()
    if not ready.decode(errors="replace").startswith(READY_LINE):
        raise RuntimeError(f"the fold server of {copy} did not start: {ready!r}")
    return {"seconds": seconds, "backend": backend}


def measure(group, copy, ws, folder, number, smoke):
    """One measurement of a group on a copy (number: of the routine's experiment): {'seconds', ...}."""
    if group == "server":
        return server_start(copy, ws)
    if group == "preprocessing":
        command = preprocessing.pipeline_command(ws, smoke, f"tweak_{copy.name}", repo=copy)
        return common.run(command, common.environment(ws, copy), folder / f"{copy.name}.log")
    experiments = folder / copy.name
    experiments.mkdir(exist_ok=True)
    instances = overhead.example_instances((1,), epochs=1)
    run = overhead.run_routine(ws, experiments, instances, number, 2 if smoke else 4, copy)
    return {"seconds": run["wall"], **run["launch"]["phases"]}


def rotated(names, rep):
    """names in the order of repetition rep: rotated by one place each repetition."""
    return names[rep % len(names):] + names[:rep % len(names)]


def interleaved(group, copies, ws, folder, smoke):
    """Every repetition runs the group's measurement on each of its copies, after one round that is not counted
    (the first runs find colder caches; not with --smoke): {variant: [measurements]}."""
    runs = {variant: [] for variant in GROUPS[group] if variant in copies}
    for rep in range(0 if smoke else -1, REPS[smoke]):
        for variant in rotated(list(runs), rep):
            measured = measure(group, copies[variant], ws, folder, rep + 1, smoke)
            if rep >= 0:
                runs[variant].append(measured)
    return runs


def feature_times(copies, ws, smoke):
    """The copies' feat_analysis (on, and d off) on the same clips in this process, one BLAS thread as in a
    preprocessing worker, interleaved: ({variant: [{'ms_per_clip'}]}, {variant: features}, {variant: whether two BLAS
    threads give the same features})."""
    import librosa
    import threadpoolctl
    from utility_functions import load_config
    config = load_config(ws["config"])
    rate, settings = config["preprocessing"]["sample_rate"], config["features"]
    length = int(round(config["preprocessing"]["clip_seconds"] * rate))
    signals = np.stack([librosa.util.fix_length(librosa.load(path, sr=rate)[0], size=length)
                        for path in sorted(ws["audio"].rglob("*.wav"))[:FEATURE_CLIPS[smoke]]])
    modules, plans, runs, features = {}, {}, {}, {}
    for name in ("on", "d_sparse_mel"):
        spec = importlib.util.spec_from_file_location(f"feat_analysis_{name}", copies[name] / "feat_analysis.py")
        modules[name], runs[name] = importlib.util.module_from_spec(spec), []
        spec.loader.exec_module(modules[name])
        plans[name] = modules[name].analysis_plan(rate, settings)  # built once per run, as the pipeline does
        modules[name].extract_features_batch(signals[:1], rate, settings, plans[name])  # librosa's first call
    for rep in range(REPS[smoke]):
        for name in rotated(list(modules), rep):
            with threadpoolctl.threadpool_limits(limits=1):
                started = time.perf_counter()
                features[name] = modules[name].extract_features_batch(signals, rate, settings, plans[name])
                runs[name].append({"ms_per_clip": 1000 * (time.perf_counter() - started) / len(signals)})
    with threadpoolctl.threadpool_limits(limits=2):
        same = {name: np.array_equal(features[name], module.extract_features_batch(signals, rate, settings,
                                                                                    plans[name]))
                for name, module in modules.items()}
    return runs, features, same


def saved(runs, variant, key="seconds"):
    """Off - on of key, paired by repetition: spread()."""
    return common.spread([off[key] - on[key] for on, off in zip(runs["on"], runs[variant])])


def table_rows(results):
    """Per group its 'on' time and per tweak its 'off' time and the saving; then the memory that mallopt costs,
    the phases where c and e act, and whether the dense mel product gives the same features."""
    rows = []
    for group, runs in results.items():
        key, unit = FIGURE[group]
        times = {variant: common.spread([run[key] for run in runs[variant]]) for variant in runs}
        rows.append(common.row(f"{group}: all tweaks on", common.show(times["on"], unit)))
        rows += [common.row(f"{group}: {variant} off; saved by it",
                            f"{common.show(times[variant], unit)}; {common.show(saved(runs, variant, key), unit)}")
                 for variant in list(runs)[1:]]
    extras = [("preprocessing", name, "peak_mib", "MiB", "largest process's peak RSS")
              for name in GROUPS["preprocessing"][1:]]
    for group, name, key, unit, label in extras + [("routine", "c_os_exit", "close_server", "s", "close_server phase"),
                                                   ("routine", "e_early_server", "validate", "s", "validate phase")]:
        if name in results.get(group, {}):
            rows.append(common.row(f"{group}: {name} off, saved on the {label}",
                                   common.show(saved(results[group], name, key), unit)))
    return rows


def main():
    """Copies, interleaved measurements, table rows."""
    args, ws, folder = common.start("tweaks", __doc__.splitlines()[0])
    copies = make_copies(Path(tempfile.gettempdir()) / "xval_tweaks")
    results = {group: interleaved(group, copies, ws, folder, args.smoke)
               for group in ("preprocessing", "routine", "server")}
    rows = table_rows(results)
    if "d_sparse_mel" in copies:
        results["features"], features, same = feature_times(copies, ws, args.smoke)
        rows += table_rows({"features": results["features"]})
        on, off = features["on"], features["d_sparse_mel"]
        rows.append(common.row("d_sparse_mel: dense against sparse: allclose, largest difference (dB); the same "
                               "features with 1 and 2 BLAS threads: sparse, dense",
                               f"{np.allclose(on, off, rtol=1e-5, atol=1e-3)}, {np.max(np.abs(on - off)):.2g}; "
                               f"{same['on']}, {same['d_sparse_mel']}"))
    rows += [common.row(f"{name}: not found in the product (removed?)", "") for name in PATCHES if name not in copies]
    figures = {group: {variant: statistics.median([run[FIGURE[group][0]] for run in variant_runs])
                       for variant, variant_runs in runs.items()} for group, runs in results.items()}
    common.write_json(args.out, {"rows": rows, "figures": figures, "runs": results})


if __name__ == "__main__":
    main()
