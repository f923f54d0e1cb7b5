"""Run every benchmark of xval and print one table; write it as JSON.

    python3 benchmarks/run.py [--smoke] [--only NAME ...] [--workdir DIR] [--output PATH] [--markdown PATH]

Runs, each as its own process and in this order: preprocessing_throughput.py (preprocessing against a naive loop),
overhead.py (xval against plain Keras) and memory.py (the routine's and a fold's memory). Every script works in
the workspace folder (default benchmarks/results/work/, its own config.ini via XVAL_CONFIG) and writes its JSON
there; this script collects them into --output (default benchmarks/results/latest.json) with the machine, the
command, the CPU that other processes used meanwhile (a measurement on a busy machine is worth less) and the
table. --smoke runs every script in its tiny mode (a few seconds each): what tests/test_benchmarks_smoke.py does.
The full run takes about 13 minutes on 2 cores (plus about 20 s to synthesise the corpus the first time).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common

BENCHMARKS = (("preprocessing", "preprocessing_throughput.py"), ("overhead", "overhead.py"), ("memory", "memory.py"))
DEFAULT_OUTPUT = common.RESULTS_DIR / "latest.json"
TABLE_HEADER = ("benchmark", "figure", "value", "target", "met")


# ----------------------------------------------------------------------------------------------------------------
# Running the scripts

def run_script(name, script, args, workdir):
    """Run one benchmark script to the end (its output into a log next to its JSON); returns its result dict."""
    out = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(common.BENCHMARKS_DIR / script), "--workdir", str(workdir), "--json-out", str(out)]
    if args.smoke:
        command.append("--smoke")
    print(f"running {name} ({script}) ...", flush=True)
    before = common.cpu_counters()
    with open(log, "wb") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=str(common.REPO))
    load = common.foreign_load(before, common.cpu_counters())
    if completed.returncode != 0 or not out.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{script} ended with exit code {completed.returncode}; end of {log}:\n{tail}")
    result = json.loads(out.read_text(encoding="utf-8"))
    result["other_load"] = load
    print(f"  done in {time.monotonic() - before['time']:.0f} s (other processes used "
          f"{load['foreign_share_of_capacity']:.0%} of the CPUs meanwhile)", flush=True)
    return result


# ----------------------------------------------------------------------------------------------------------------
# The table

def yes_no(flag):
    """'yes' / 'NO' for a target flag, '' when there is none."""
    return "" if flag is None else ("yes" if flag else "NO")


def overhead_rows(result):
    """Table rows of the overhead benchmark."""
    size = result["size"]
    folds = result["folds_total"]
    rows = [
        ("overhead", f"size: {len(size['instances'])} instances x {size['num_folds']} folds x {size['epochs']} "
                     f"epochs, {size['reps']} interleaved repetitions (medians)", "", "", ""),
        ("overhead", "xval routine wall (s)", f"{result['xval_wall_seconds']:.1f}", "", ""),
        ("overhead", "plain Keras wall (s)", f"{result['plain_wall_seconds']:.1f}", "", ""),
        ("overhead", "wall ratio xval / plain", f"{result['wall_ratio']:.3f}",
         f"<= {result['targets']['wall_ratio_max']}", yes_no(result["targets"]["ratio_met"])),
        ("overhead", "plain Keras that also predicts + scores train/val/test: wall (s) / ratio xval to it",
         f"{result['plain_evaluating_wall_seconds']:.1f} / {result['wall_ratio_vs_plain_evaluating']:.3f}", "", ""),
        ("overhead", "pure fit, sum over folds: xval / plain (s)",
         f"{result['xval_fit_seconds']:.1f} / {result['plain_fit_seconds']:.1f}", "", ""),
        ("overhead", "fixed cost per fold: (xval wall - fit) / folds (s)", f"{result['fixed_seconds_per_fold']:.2f}",
         f"<= {result['targets']['fixed_seconds_per_fold_max']}", yes_no(result["targets"]["fixed_met"])),
        ("overhead", "plain's own fixed cost per fold: (plain wall - fit) / folds (s)",
         f"{result['plain_fixed_seconds_per_fold']:.2f}", "", ""),
        ("overhead", "xval wall - plain wall, per fold (s)", f"{result['extra_seconds_per_fold_vs_plain']:.2f}", "",
         ""),
    ]
    rows.append(("overhead", "fixed cost per fold, by part (s; [once] = per run, divided by the folds):", "", "",
                 ""))
    for part in result["breakdown"]:
        if part["key"] != "fit":
            rows.append(("overhead", f"  {part['part']} [{part['kind']}]", f"{part['seconds_per_fold']:.3f}", "", ""))
    rows.append(("overhead", "  unattributed", f"{result['unattributed_seconds'] / folds:.3f}", "", ""))
    rows.append(("overhead", "fold server started before the first fold: TensorFlow's import overlapped the "
                             "routine's own start by up to this, per run (s)",
                 f"{result['server_start_hidden_seconds']:.2f}", "", ""))
    return rows


def preprocessing_rows(result):
    """Table rows of the preprocessing benchmark."""
    pipeline, naive = result["pipeline"], result["naive"]
    rows = [
        ("preprocessing", f"corpus: {result['clips']} clips, {result['audio_seconds']:.0f} s of audio; "
                          f"--jobs {result['jobs']}; whole processes", "", "", ""),
        ("preprocessing", "pipeline: s / clips per s / audio s per s",
         f"{pipeline['seconds']:.2f} / {pipeline['clips_per_second']:.0f} / "
         f"{pipeline['audio_seconds_per_second']:.0f}", "", ""),
        ("preprocessing", "naive loop: s / clips per s / audio s per s",
         f"{naive['seconds']:.2f} / {naive['clips_per_second']:.0f} / {naive['audio_seconds_per_second']:.0f}",
         "", ""),
        ("preprocessing", "speed-up (start-up and first call in both)", f"{result['speedup']:.2f}x",
         f">= {result['targets']['speedup_min']:.0f}x", yes_no(result["targets"]["speedup_met"])),
    ]
    warm_pipeline, warm_naive = result["pipeline_warm"], result["naive_warm"]
    rows += [
        ("preprocessing", "warm pipeline (start-up, first call out): s / clips per s / audio s per s",
         f"{warm_pipeline['seconds']:.2f} / {warm_pipeline['clips_per_second']:.0f} / "
         f"{warm_pipeline['audio_seconds_per_second']:.0f}", "", ""),
        ("preprocessing", "warm naive loop: s / clips per s / audio s per s",
         f"{warm_naive['seconds']:.2f} / {warm_naive['clips_per_second']:.0f} / "
         f"{warm_naive['audio_seconds_per_second']:.0f}", "", ""),
        ("preprocessing", "speed-up warm (start-up and first call out of both)", f"{result['speedup_warm']:.2f}x",
         "", ""),
        ("preprocessing", "librosa first call (lazy imports, numba): naive / pipeline parent (s)",
         f"{result['naive_first_call_extra_seconds']:.2f} / {result['pipeline_first_call_seconds']:.2f}", "", ""),
        ("preprocessing", "outputs equal (allclose), largest difference (dB)",
         f"{result['output_check']['allclose']}, {result['output_check']['max_abs_difference_db']:.2g}", "", ""),
        ("preprocessing", "naive loop's librosa.load (decode + soxr_hq resampling) per clip (ms)",
         f"{1000 * result['naive_load_seconds_per_clip']:.2f}", "", ""),
        ("preprocessing", "naive process's start-up: interpreter, imports, librosa's first call (s)",
         f"{result['ceiling']['naive_startup_seconds']:.2f}", "", ""),
        ("preprocessing", f"ceiling: a librosa-based path giving the same arrays on {result['jobs']} cores, "
                          "features free: least s / speed-up", f"{result['ceiling']['least_seconds']:.2f} / "
                          f"{result['ceiling']['speedup']:.2f}x", "", ""),
    ]
    return rows


def memory_rows(result):
    """Table rows of the memory benchmark."""
    parent, fold = result["parent"], result["fold"]
    size = result["size"]
    return [
        ("memory", f"routine: {size['instances']} instances x {size['num_folds']} folds x {size['epochs']} epoch",
         "", "", ""),
        ("memory", "routine process peak RSS after instance 1 / at the end (MiB)",
         f"{parent['peak_after_first_instance_mib']:.1f} / {parent['peak_at_end_mib']:.1f}", "", ""),
        ("memory", "routine process peak growth after instance 1 (MiB)", f"{parent['growth_mib']:.1f}",
         f"<= {result['targets']['parent_growth_max_mib']:.0f}", yes_no(parent["growth_met"])),
        ("memory", "TensorFlow baseline of this fold: plain Keras fitting its model (same batch size, epochs) on "
                   "one batch per split, peak RSS (MiB)", f"{fold['baseline_mib']:.1f}", "", ""),
        ("memory", "fold's arrays (MiB)", f"{fold['arrays_mib']:.1f}", "", ""),
        ("memory", "fold process (fresh, training.py JOB) peak RSS (MiB)", f"{fold['standalone_peak_mib']:.1f}",
         f"<= {fold['limit_mib']:.1f}", yes_no(fold["met"])),
        ("memory", "fold process: (peak - baseline) / arrays", f"{fold['factor']:.2f}",
         f"<= {result['targets']['fold_factor_max']}", yes_no(fold["met"])),
        ("memory", "for reference: TensorFlow import + a trivial one-unit model's fit, peak RSS (MiB) / fold's "
                   "(peak - it) / arrays", f"{fold['trivial_baseline_mib']:.1f} / "
                   f"{fold['factor_over_trivial_baseline']:.2f}", "", ""),
        ("memory", "same fold's fit with plain Keras (fresh process) peak RSS (MiB)",
         f"{fold['plain_keras_peak_mib']:.1f}", "", ""),
        ("memory", "xval fold - plain Keras fold (MiB)", f"{fold['over_plain_keras_mib']:.1f}", "", ""),
        ("memory", "forked folds in the routine: peak RSS / PSS / private (MiB)",
         f"{fold['forked_peak_mib_median']:.0f} / {fold['forked_pss_mib_median']:.0f} / "
         f"{fold['forked_private_mib_median']:.0f}", "", ""),
    ]


ROWS = {"overhead": overhead_rows, "preprocessing": preprocessing_rows, "memory": memory_rows}


def table_rows(results):
    """Every benchmark's rows plus one row of the other processes' CPU load during it."""
    rows = []
    for name, result in results.items():
        rows += ROWS[name](result)
        rows.append((name, "CPU used by other processes meanwhile (share of the machine)",
                     f"{result['other_load']['foreign_share_of_capacity']:.0%}", "", ""))
    return rows


def format_table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    widths = [max(len(str(row[column])) for row in (TABLE_HEADER, *rows)) for column in range(len(TABLE_HEADER))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in (TABLE_HEADER, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every script in its tiny mode (seconds each)")
    parser.add_argument("--only", nargs="+", choices=[name for name, _ in BENCHMARKS], help="run only these")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="workspace folder (default benchmarks/results/work, or work_smoke with --smoke)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON written (default "
                                                                            "benchmarks/results/latest.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the selected benchmarks, print the table, write the JSON (and Markdown)."""
    args = parse_args(argv)
    workdir = common.workdir_of(args)
    started = time.monotonic()
    print(f"workspace {workdir}: corpus and features ...", flush=True)
    common.ensure_workspace(workdir, args.smoke)
    results = {name: run_script(name, script, args, workdir) for name, script in BENCHMARKS
               if not args.only or name in args.only}
    rows = table_rows(results)
    report = {"command": " ".join(["python3", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
              "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": common.machine_info(),
              "seconds": round(time.monotonic() - started, 1),
              "table": [dict(zip(TABLE_HEADER, row, strict=True)) for row in rows],
              "results": results}
    common.write_json(args.output, report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(format_table(rows, markdown=True), encoding="utf-8")
    print()
    print(format_table(rows), end="")
    print(f"\n{len(results)} benchmarks in {report['seconds']:.0f} s; JSON: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
