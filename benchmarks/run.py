"""Run xval's benchmarks, each a script in its own process, and print one table; write it as JSON and Markdown.

    python3 benchmarks/run.py [--smoke] [--only NAME ...] [--workdir DIR] [--output JSON] [--markdown MD]

Makes the workspace (config.ini, demo corpus, features; only what is missing), then runs preprocessing.py,
overhead.py, memory.py and parallel.py (and tweaks.py, search_budget.py and scale.py, only when named in --only),
and records
how much of the machine's CPU other processes used meanwhile: a figure measured on a busy machine is worth less. The
full run takes about 12 minutes on 2 cores without parallel.py (which adds about 6; tweaks.py 7.5 more,
search_budget.py about 23); --smoke (tiny sizes, seconds a script) is what CI runs. parallel.py and
search_budget.py need requirements-benchmarks.txt (scikeras) installed, search_budget.py requirements-search.txt.
"""
import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import common

SCRIPTS = ("preprocessing", "overhead", "memory", "parallel", "tweaks", "search_budget", "scale")
DEFAULT = SCRIPTS[:4]
HEADER = ("benchmark", "figure", "value", "target", "met")


def run_script(name, ws, smoke):
    """Run benchmarks/{name}.py on the workspace; returns its result with the other processes' CPU share added."""
    out, log = ws["workdir"] / f"{name}.json", ws["workdir"] / f"{name}.log"
    print(f"{name} ...", flush=True)
    before = common.cpu_counters()
    common.run([sys.executable, str(common.BENCHMARKS / f"{name}.py"), str(ws["workdir"]), str(out)] +
               (["--smoke"] if smoke else []), dict(os.environ, PYTHONPATH=str(common.REPO)), log)
    result = json.loads(out.read_text(encoding="utf-8"))
    result["other_load"] = common.other_load(before, common.cpu_counters())
    result["rows"].append(common.row("CPU used by other processes meanwhile (share of the machine)",
                                     f"{result['other_load']:.0%}"))
    print(f"  done in {time.monotonic() - before['time']:.0f} s", flush=True)
    return result


def table(rows, markdown=False):
    """Rows (tuples of HEADER's fields) as an aligned text table, or as a Markdown table."""
    if markdown:
        return "".join("| " + " | ".join(r) + " |\n" for r in (HEADER, ("---",) * len(HEADER), *rows))
    widths = [max(len(r[column]) for r in (HEADER, *rows)) for column in range(len(HEADER))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() + "\n"
                   for r in (HEADER, *rows))


def machine():
    """CPU, cores, Python and the versions that matter."""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(),
            **{name: metadata.version(name) for name in ("tensorflow", "keras", "numpy", "librosa")}}


def main():
    """Parse the command line, make the workspace, run the scripts, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds a script")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=DEFAULT, help="run only these")
    parser.add_argument("--workdir", type=Path, help="workspace (default benchmarks/results/work[_smoke])")
    parser.add_argument("--output", type=Path, default=common.BENCHMARKS / "results" / "latest.json")
    parser.add_argument("--markdown", type=Path, default=common.BENCHMARKS / "results" / "latest.md")
    args = parser.parse_args()
    started = time.monotonic()
    workdir = args.workdir or common.BENCHMARKS / "results" / ("work_smoke" if args.smoke else "work")
    print(f"workspace {workdir} ...", flush=True)
    ws = common.make_workspace(workdir, args.smoke)
    results = {name: run_script(name, ws, args.smoke) for name in SCRIPTS if name in args.only}
    rows = [(name, r["figure"], r["value"], r["target"], r["met"]) for name, result in results.items()
            for r in result["rows"]]
    common.write_json(args.output, {"command": " ".join(sys.argv), "smoke": args.smoke, "machine": machine(),
                                    "date": time.strftime("%Y-%m-%d %H:%M"),
                                    "seconds": round(time.monotonic() - started), "results": results,
                                    "table": [dict(zip(HEADER, r)) for r in rows]})
    args.markdown.write_text(table(rows, markdown=True), encoding="utf-8")
    print("\n" + table(rows) + f"\n{len(results)} benchmarks in {time.monotonic() - started:.0f} s: {args.output}")


if __name__ == "__main__":
    main()
