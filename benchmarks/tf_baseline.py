"""TensorFlow's own memory baseline: peak RSS of a process that imports TensorFlow and fits a trivial model.

    python3 benchmarks/tf_baseline.py OUT.json

OUT.json: {"ru_maxrss_bytes", "VmHWM", "VmRSS"} read at the end of the process (getrusage and /proc/self/status).
"""
import json
import os
import resource
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow  # noqa: E402,F401
import keras  # noqa: E402

TRIVIAL_SAMPLES, TRIVIAL_FEATURES = 64, 4
KIB = 1024


def fit_trivial_model():
    """One epoch of a one-unit dense model on a little random data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(TRIVIAL_SAMPLES, TRIVIAL_FEATURES)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input(shape=(TRIVIAL_FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)


def memory_now():
    """ru_maxrss (bytes) and VmHWM / VmRSS (bytes) of this process."""
    reading = {"ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                reading[key] = int(rest.split()[0]) * KIB
    return reading


def main(out_path):
    """Fit the trivial model, then write the memory readings."""
    fit_trivial_model()
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(memory_now(), handle, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python3 benchmarks/tf_baseline.py OUT.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
