"""Preprocessing: preprocessing_ravdess.py against a naive librosa.load loop giving the same arrays.

    python3 benchmarks/preprocessing.py WORKDIR OUT.json [--smoke]

The demo corpus (1,440 clips) to log-mel features per config.ini. Per repetition, in alternating order, two
whole processes timed from outside: `preprocessing_ravdess.py --demo --force --jobs 2` and
benchmarks/naive_preprocessing.py; both read the audio from the page cache (every file is read once first).
Then the outputs are compared (allclose per actor).
"""
import sys

import numpy as np

import common

REPS = {False: 5, True: 1}  # by --smoke
JOBS, TARGET_SPEEDUP = 2, 4.0
RTOL, ATOL = 1e-5, 1e-3  # dB: both paths share the arithmetic, they may differ in float32 rounding only


def pipeline_command(ws, smoke, dataset, repo=common.REPO):
    """The product's preprocessing of the workspace's corpus into `dataset`, recomputed (--force)."""
    source = ["--input", str(ws["audio"])] if smoke else ["--demo"]  # the smoke corpus is not the full demo
    return [sys.executable, str(repo / "preprocessing_ravdess.py"), *source, "--dataset", dataset, "--force",
            "--jobs", str(JOBS), "--config", str(ws["config"])]


def compare(left, right_path):
    """(allclose for every actor, the largest difference, clips) of the features {actor: array} left and those of
    the .npz file right_path; raises when they differ in actors or shapes."""
    with np.load(right_path) as right:
        pairs = [(left[actor], right[actor]) for actor in sorted(left) if sorted(left) == sorted(right.files)]
    if not pairs or any(a.shape != b.shape for a, b in pairs):
        raise RuntimeError(f"the pipeline's features and {right_path} hold other actors or shapes")
    return (all(np.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in pairs),
            max(float(np.max(np.abs(a - b))) for a, b in pairs), sum(len(a) for a, _ in pairs))


def main():
    """Interleaved repetitions, the output check, the table rows."""
    args, ws, folder = common.start("preprocessing", __doc__.splitlines()[0])
    for path in ws["audio"].rglob("*.wav"):
        path.read_bytes()
    naive_npz, env = folder / "naive.npz", common.environment(ws)
    naive = [sys.executable, str(common.BENCHMARKS / "naive_preprocessing.py"), str(ws["config"]), str(ws["audio"]),
             str(naive_npz)]
    walls = {"pipeline": [], "naive": []}
    for rep in range(REPS[args.smoke]):
        for side in ("pipeline", "naive")[::1 if rep % 2 == 0 else -1]:
            command = pipeline_command(ws, args.smoke, "bench_pipeline") if side == "pipeline" else naive
            walls[side].append(common.run(command, env, folder / f"{side}.log")["seconds"])
    from utility_functions import load_dataset
    same, largest, clips = compare(load_dataset(ws["features"], "bench_pipeline")[0], naive_npz)
    pipeline, naive = common.spread(walls["pipeline"]), common.spread(walls["naive"])
    speedup = naive["median"] / pipeline["median"]
    each = [n / p for p, n in zip(walls["pipeline"], walls["naive"])]
    rows = [common.row(f"{clips} clips, --jobs {JOBS}, whole processes; {pipeline['n']} interleaved repetitions", ""),
            common.row("preprocessing_ravdess.py",
                       f"{common.show(pipeline)}: {clips / pipeline['median']:.0f} clips/s"),
            common.row("naive librosa.load loop", f"{common.show(naive)}: {clips / naive['median']:.0f} clips/s"),
            common.row("speed-up naive / pipeline", f"{speedup:.2f}x (repetitions {min(each):.2f} to {max(each):.2f})",
                       f">= {TARGET_SPEEDUP:g}x", speedup >= TARGET_SPEEDUP),
            common.row("outputs equal (allclose), largest difference (dB)", f"{same}, {largest:.2g}", "allclose", same)]
    common.write_json(args.out, {"rows": rows, "figures": {
        "pipeline_wall": pipeline["median"], "naive_wall": naive["median"], "speedup": speedup, "clips": clips,
        "largest_difference_db": largest, "allclose": same, "walls": walls}})


if __name__ == "__main__":
    main()
