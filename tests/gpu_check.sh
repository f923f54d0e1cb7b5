#!/usr/bin/env bash
# The GPU check of the backends (not run by CI, which has no GPU): a routine with a torch and a jax instance,
# 2 folds each, on GPU 0, from demo features carried along (data/features/ravdess_demo_*), reporting per fold the
# device the fold saw, its fit time, and the GPU memory in use before, between and after the folds (released when
# each fold process ends). Needs PyTorch and JAX with CUDA and Keras 3; TensorFlow is not needed.
#   python3 preprocessing_ravdess.py --demo      # here, once: the features to carry
#   bash tests/gpu_check.sh                      # there: on the machine with the GPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp}/gpu_check
mkdir -p "$out"
used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
echo "GPU memory used before: $(used) MiB"
cat > "$out/routine.py" <<'PY'
import xval_instance
experiment_dict = {
    1: ['task_type = "classification"', 'architecture = "EXAMPLE_model"', 'comment_1 = "torch on GPU"',
        'comment_2 = ""', 'backend = "torch"', 'num_epochs = 3'],
    2: ['task_type = "classification"', 'architecture = "EXAMPLE_model"', 'comment_1 = "jax on GPU"',
        'comment_2 = ""', 'backend = "jax"', 'num_epochs = 3'],
}
xval_instance.run_routine(description="GPU check", gpu_ID=0, dataset="ravdess_demo", num_experiment=1, num_folds=2,
                          experiment_folder=None, overwrite_results=True, debug_mode=True,
                          experiment_dict=experiment_dict)
PY
sed "s#^experiment_folder = .*#experiment_folder = $out/experiments#" config.ini > "$out/config.ini"
sed -i "s#^features_folder = .*#features_folder = $PWD/data/features#" "$out/config.ini"
( while sleep 1; do echo "$(date +%T) $(used) MiB"; done ) > "$out/memory.log" &
sampler=$!
XVAL_CONFIG="$out/config.ini" python3 "$out/routine.py" 2>&1 | tee "$out/routine.log"
kill $sampler
echo "GPU memory used after: $(used) MiB"
python3 - "$out" <<'PY'
import glob, json, re, sys
out = sys.argv[1]
for path in sorted(glob.glob(f"{out}/experiments/experiment_1/results/folds/*.json")):
    fold = json.load(open(path))
    log = open(path.replace("results/folds/results_", "logs/").replace(".json", ".log")).read()
    device = re.findall(r"xval-device: (.*)", log)
    print(f"{path.rsplit('/', 1)[1]}: device {device[-1] if device else '?'}, fit {fold['timings']['fit']:.1f} s, "
          f"fold {fold['seconds']:.1f} s, test UAR {fold['metrics']['test']['balanced_accuracy']:.3f}")
print("peak GPU memory during the run:", max(int(line.split()[1]) for line in open(f"{out}/memory.log")), "MiB")
PY
