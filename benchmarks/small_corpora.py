"""Default instances against the baseline on small corpora shaped like users' ones (issue 26).

    python3 benchmarks/small_corpora.py WORKDIR OUT.json [--corpora digits,emotions,demo] [--recipes NAME,...]
                                        [--folds K]

Corpora, synthesised here (demo_corpus's voice) and preprocessed with preprocessing_dataset.py from a CSV:
  digits    10 speakers x 10 spoken "digits" (made-up words of 2 to 4 phones) x 8 repetitions = 800 clips of
            0.6-1.0 s, 8 kHz, MFCC (20 coefficients), 1 s clips: a small spoken-digit corpus;
  emotions  12 actors x 4 emotions (neutral, happy, sad, angry; two intensities) x 2 sentences x 2 repetitions =
            336 clips of 1.5-3.5 s, 16 kHz, log-mel 64, 3 s clips: short emotional sentences;
  demo      the demo corpus as the quick start makes it (24 actors, 1,440 clips, log-mel 64).
Each corpus is one experiment (GroupKFold by speaker, --folds K, default 3) whose instances are the RECIPES asked
for, so every recipe and the baseline (baseline.py) are scored on the same folds. OUT.json: per corpus, per recipe
the test UAR mean and std over folds, per fold, and the baseline's; printed as a Markdown table.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import demo_corpus  # noqa: E402

# made-up words, one per "digit": (kind, symbol, ms, stressed) as demo_corpus.STATEMENTS
DIGITS = {
    0: (("vfric", "z", 90, 0), ("vowel", "I", 110, 1), ("vowel", "o", 150, 0)),
    1: (("vowel", "o", 60, 0), ("vowel", "a", 170, 1), ("nasal", "N", 90, 0)),
    2: (("stop", "t", 55, 0), ("vowel", "o", 220, 1)),
    3: (("fric", "dh", 80, 0), ("vowel", "@", 50, 0), ("vowel", "i", 200, 1)),
    4: (("fric", "s", 90, 0), ("vowel", "o", 200, 1), ("vowel", "@", 60, 0)),
    5: (("fric", "s", 90, 0), ("vowel", "a", 140, 1), ("vowel", "I", 80, 0), ("vfric", "z", 90, 0)),
    6: (("fric", "s", 100, 0), ("vowel", "I", 110, 1), ("stop", "k", 55, 0), ("fric", "s", 90, 0)),
    7: (("fric", "s", 90, 0), ("vowel", "@", 80, 1), ("vstop", "b", 40, 0), ("vowel", "@", 60, 0),
        ("nasal", "N", 80, 0)),
    8: (("vowel", "a", 150, 1), ("vowel", "I", 80, 0), ("stop", "t", 55, 0)),
    9: (("nasal", "N", 70, 0), ("vowel", "a", 150, 1), ("vowel", "I", 80, 0), ("nasal", "N", 90, 0)),
}
CORPORA = {
    "digits": {"settings": {"preprocessing": {"sample_rate": "8000", "clip_seconds": "1.0"},
                            "features": {"type": "mfcc", "n_fft": "256", "win_length": "256", "hop_length": "80",
                                         "n_mels": "40", "n_mfcc": "20"}}},
    "emotions": {"settings": {"preprocessing": {"clip_seconds": "3.0"}, "features": {"type": "mel"}}},
    "demo": {"settings": {}},
}
# recipes: parameter strings of one instance each (what an experiment_dict holds): the two architectures with the
# defaults as they are, and as they were before 2026-12-04 (num_epochs 20, patience 5); the pooled model's recipe
# (pooled_std_loss: statistics batch-normalised, trained to convergence on the training loss) and two ablations of it
RECIPES = {
    "cnn": ['architecture = "EXAMPLE_model"'],
    "pooled": ['architecture = "POOLED_STATS_model"'],
    "cnn_before": ['architecture = "EXAMPLE_model"', "num_epochs = 20", "patience = 5"],
    "pooled_before": ['architecture = "POOLED_STATS_model"', "num_epochs = 20", "patience = 5"],
    "pooled_loss": ['architecture = "POOLED_STATS_model"', 'save_best_model_metric = "loss"'],
    "pooled_std_loss": ['architecture = "POOLED_STATS_model"', "standardize = True", 'save_best_model_metric = "loss"'],
    "pooled_std_loss_64": ['architecture = "POOLED_STATS_model"', "standardize = True", "hidden_units = (64,)",
                           "dropout = 0.5", 'save_best_model_metric = "loss"'],
}


def write_config(folder, settings):
    """folder/config.ini: the repository's, [paths] inside folder, settings ({section: {key: value}}) over it."""
    import configparser
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(REPO / "config.ini", encoding="utf-8")
    for key in ("ravdess_folder", "demo_folder", "features_folder", "experiment_folder"):
        parser.set("paths", key, str(folder / key.replace("_folder", "")))
    for section, values in settings.items():
        for key, value in values.items():
            parser.set(section, key, value)
    path = folder / "config.ini"
    with open(path, "w", encoding="utf-8") as handle:
        parser.write(handle)
    return path


def digits_audio(folder, speakers=10, repetitions=8):
    """The digits corpus's wav files and [(file, label, speaker)]; existing files are kept."""
    rows = []
    for speaker in range(1, speakers + 1):
        for digit, phones in DIGITS.items():
            for repetition in range(1, repetitions + 1):
                path = folder / f"spk{speaker:02d}" / f"{digit}_{repetition:02d}.wav"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    audio = demo_corpus.synthesize_clip(speaker, 1, 1, 10 + digit, repetition, seed=7,
                                                        clip_seconds_range=(0.6, 1.0), phones=phones)
                    sf.write(path, audio, demo_corpus.SAMPLE_RATE, subtype="PCM_16")
                rows.append((path.relative_to(folder).as_posix(), str(digit), f"spk{speaker:02d}"))
    return rows


def emotions_audio(folder, n_actors=12, clip_seconds_range=(1.5, 3.5)):
    """The emotional sentences' wav files (demo_corpus) and [(file, label, speaker)]."""
    made = demo_corpus.make_demo_corpus(folder, n_actors=n_actors, emotions=("neutral", "happy", "sad", "angry"),
                                        clip_seconds_range=clip_seconds_range, seed=11)
    names = demo_corpus.EMOTION_NAMES
    return [(path.relative_to(folder).as_posix(), names[int(path.name.split("-")[2]) - 1], path.parent.name)
            for path in made["clips"]]


def demo_audio(folder):
    made = demo_corpus.make_demo_corpus(folder)
    names = demo_corpus.EMOTION_NAMES
    return [(path.relative_to(folder).as_posix(), names[int(path.name.split("-")[2]) - 1], path.parent.name)
            for path in made["clips"]]


def prepare(workdir, corpus):
    """Synthesise and preprocess a corpus once; returns its config.ini path."""
    folder = workdir / corpus
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder, CORPORA[corpus]["settings"])
    audio = folder / "audio"
    rows = {"digits": digits_audio, "emotions": emotions_audio, "demo": demo_audio}[corpus](audio)
    table = audio / "corpus.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "speaker"])
        writer.writerows(rows)
    if not (folder / "features" / f"{corpus}_index.json").exists():
        subprocess.run([sys.executable, str(REPO / "preprocessing_dataset.py"), "--csv", str(table), "--dataset",
                        corpus, "--config", str(config)], check=True)
    return config


def run_experiment(workdir, corpus, config, recipes, folds):
    """Run one experiment of the recipes on the corpus; returns its summary JSON."""
    folder = workdir / corpus
    experiment_dict = {number: ['task_type = "classification"', f'comment_1 = "{name}"', 'comment_2 = ""',
                                *RECIPES[name]]
                       for number, name in enumerate(recipes, start=1)}
    routine = folder / "xval_routine_small.py"
    routine.write_text("\n".join([
        "import xval_instance",
        f"experiment_dict = {experiment_dict!r}",
        f"xval_instance.run_routine(description='small corpora benchmark', gpu_ID=-1, dataset={corpus!r}, "
        f"num_experiment=1, num_folds={folds}, experiment_folder={str(folder / 'experiments')!r}, "
        "overwrite_results=False, debug_mode=False, experiment_dict=experiment_dict)"]) + "\n", encoding="utf-8")
    environment = dict(os.environ, XVAL_CONFIG=str(config), PYTHONPATH=str(REPO))
    started = time.monotonic()
    completed = subprocess.run([sys.executable, str(routine)], env=environment, cwd=folder, text=True,
                               capture_output=True)
    print(completed.stdout[-3000:], completed.stderr[-2000:], sep="\n")
    summary_path = folder / "experiments" / "experiment_1" / f"{corpus}_exp1_summary.json"
    summary = json.loads(summary_path.read_text())["task_types"]["classification"]
    return summary, time.monotonic() - started


def rows_of(corpus, summary, recipes, seconds):
    """{recipe or 'baseline': {mean, std, per_fold}} of the test UAR."""
    table = {}
    for entry in summary["instances"]:
        table[recipes[entry["instance"] - 1]] = {"mean": entry["test"]["mean"], "std": entry["test"]["std"]}
    base = summary["baseline"]["summary"]["test"]["balanced_accuracy"]
    table["baseline"] = {"mean": base["mean"], "std": base["std"],
                         "per_fold": [fold["test"] for fold in summary["baseline"]["per_fold"]]}
    return {"corpus": corpus, "seconds": round(seconds, 1), "test_uar": table}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--corpora", default="digits,emotions,demo")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    results = []
    for corpus in args.corpora.split(","):
        config = prepare(args.workdir.resolve(), corpus)
        summary, seconds = run_experiment(args.workdir.resolve(), corpus, config, recipes, args.folds)
        results.append(rows_of(corpus, summary, recipes, seconds))
        args.out.write_text(json.dumps(results, indent=1))
    print("| corpus | " + " | ".join(recipes + ["baseline"]) + " |")
    print("|---" * (len(recipes) + 2) + "|")
    for row in results:
        cells = [f"{row['test_uar'][name]['mean']:.3f} ± {row['test_uar'][name]['std'] or 0:.3f}"
                 for name in recipes + ["baseline"]]
        print(f"| {row['corpus']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
