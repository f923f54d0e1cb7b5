"""Phase tracing for the benchmarks: where the time of an xval routine goes, recorded without editing xval.

Python imports `sitecustomize` at start-up from the first folder of sys.path holding one; the benchmarks put this
folder first on PYTHONPATH of the routine they measure, and every process of the routine inherits it (the routine,
its `training.py --serve` fold server and the fold processes forked from that). When XVAL_BENCH_TRACE names a
file, this module wraps the engine's functions in timers and appends one JSON line per call to that file:
    {"pid", "name", "t0", "t1"}       a timed call (time.monotonic(), the same clock in every process)
    {"pid", "name", "t", ...}         a moment (process start, fork, exit) or a memory reading
Without XVAL_BENCH_TRACE it does nothing. The wrapped functions behave exactly as before; each record costs one
small append (about 20 us).

How the code is reached: modules imported by name (xval_instance, results_to_excel, training in the routine) are
patched right after they execute, by a finder on sys.meta_path. The fold server runs training.py as __main__,
which no import sees: its functions are patched when it first imports keras (an audit hook on "import" fires
before that import, when every function of the script exists), and the fold process's when os.fork returns 0.
"""
import functools
import importlib.abc
import json
import os
import sys
import time

TRACE_ENV_VAR = "XVAL_BENCH_TRACE"
TRACE_FILE = os.environ.get(TRACE_ENV_VAR)

# Functions timed in each module of the routine process (module-level names, looked up at call time by xval).
ROUTINE_FUNCTIONS = {
    "xval_instance": ("launch", "prepare", "check_writable", "write_folds", "snapshot_code",
                      "run_instance", "write_instance_json", "rebuild_spreadsheet", "atomic_write_json",
                      "atomic_write_text", "claim", "release", "remove_stale_temp_files", "read_json",
                      "reusable_folds", "load_dataset", "check_dataset", "architecture_signatures",
                      "resolve_instance", "make_folds", "load_config"),
}
FOLD_RUNNER_METHODS = ("start", "run", "close")
# Functions timed in training.py (the fold server and its fold processes).
FOLD_FUNCTIONS = ("fold_main", "run_fold", "load_for_children", "load_dataset", "stack_items",
                  "normalisation_statistics", "build_model", "make_callbacks", "predict_and_score",
                  "atomic_write_json", "commit_temp_file", "read_json")
KERAS_METHODS = ("fit", "compile", "save", "predict", "set_weights")
TRACED_MODULES = ("xval_instance", "results_to_excel", "training")
MEMORY_FIELDS = ("VmRSS", "VmHWM")
SMAPS_FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty")


# ----------------------------------------------------------------------------------------------------------------
# Records

def record(entry):
    """Append one JSON line (with this process's pid) to the trace file; one write, so lines never interleave."""
    line = json.dumps(dict(entry, pid=os.getpid())) + "\n"
    descriptor = os.open(TRACE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode("utf-8"))
    finally:
        os.close(descriptor)


def mark(name, **extra):
    """Record a moment."""
    record({"name": name, "t": time.monotonic(), **extra})


def memory_reading(detailed=True):
    """VmRSS and VmHWM (bytes) of this process and, when detailed, its smaps_rollup totals (bytes; walking the
    page tables takes milliseconds, so not where the time is measured)."""
    reading = {}
    sources = (("/proc/self/status", MEMORY_FIELDS), ("/proc/self/smaps_rollup", SMAPS_FIELDS))
    for path, fields in sources if detailed else sources[:1]:
        try:
            with open(path, encoding="ascii") as handle:
                for line in handle:
                    key, _, rest = line.partition(":")
                    if key in fields and rest.split():
                        reading[key] = int(rest.split()[0]) * 1024
        except OSError:
            pass
    return reading


def timed(name, function, after=None):
    """function wrapped to record its start and end under name; after(): extra fields recorded with the end."""
    if getattr(function, "__xval_traced__", False):
        return function

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            ended = time.monotonic()
            record({"name": name, "t0": started, "t1": ended, **(after() if after else {})})

    wrapper.__xval_traced__ = True
    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# Patching

def patch_functions(namespace, names, prefix, after=None):
    """Replace namespace[name] (a module's __dict__) by its timed wrapper for every name present."""
    for name in names:
        if callable(namespace.get(name)):
            namespace[name] = timed(f"{prefix}.{name}", namespace[name], (after or {}).get(name))


def patch_routine_module(module):
    """Time the engine's functions in the routine process (xval_instance) after the module has run."""
    namespace = vars(module)
    if module.__name__ == "xval_instance":
        patch_functions(namespace, ROUTINE_FUNCTIONS["xval_instance"], "xval",
                        after={"run_instance": memory_reading, "rebuild_spreadsheet": memory_reading})
        runner = namespace.get("FoldRunner")
        for method in FOLD_RUNNER_METHODS if runner else ():
            setattr(runner, method, timed(f"xval.FoldRunner.{method}", getattr(runner, method)))
    elif module.__name__ == "results_to_excel":
        patch_functions(namespace, ("write_spreadsheet",), "excel")


def patch_fold_script(namespace):
    """Time training.py's functions in the fold server or a fold process (namespace: its globals)."""
    patch_functions(namespace, FOLD_FUNCTIONS, "fold", after={"run_fold": memory_reading})


def patch_keras():
    """Time keras.Model's fit, compile, save, predict and set_weights (keras must be imported already)."""
    keras = sys.modules.get("keras")
    if keras is None:
        return
    for method in KERAS_METHODS:
        setattr(keras.Model, method, timed(f"keras.{method}", getattr(keras.Model, method)))


def fold_script_namespace():
    """The globals of training.py when it runs as the main script (the fold server), else None."""
    main = sys.modules.get("__main__")
    namespace = vars(main) if main is not None else {}
    if callable(namespace.get("serve")) and callable(namespace.get("run_fold")):
        return namespace
    return None


class PatchingLoader(importlib.abc.Loader):
    """A module's own loader, followed by the patching of the module once it has executed (timed as an import)."""

    def __init__(self, loader, name):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        started = time.monotonic()
        self.loader.exec_module(module)
        record({"name": f"import.{self.name}", "t0": started, "t1": time.monotonic()})
        patch_routine_module(module)

    def __getattr__(self, attribute):
        return getattr(self.loader, attribute)


class PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds TRACED_MODULES with the other finders and hands them a PatchingLoader."""

    def find_spec(self, name, path, target=None):
        if name not in TRACED_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = PatchingLoader(spec.loader, name)
                return spec
        return None


def on_audit(event, arguments):
    """Patch the fold server's functions when it first imports keras (all of training.py's functions exist)."""
    if event != "import" or arguments[0] != "keras" or "keras" in sys.modules:
        return
    namespace = fold_script_namespace()
    if namespace is not None and not getattr(namespace.get("run_fold"), "__xval_traced__", False):
        mark("server.imports_begin")
        patch_fold_script(namespace)


def traced_fork(original_fork):
    """os.fork that records the fork in the parent and, in the child, patches the fold process's code."""

    @functools.wraps(original_fork)
    def fork():
        before = os.getpid()
        if fold_script_namespace() is not None:
            record({"name": "server.before_fork", **memory_reading(detailed=False), "t": time.monotonic()})
        started = time.monotonic()
        child = original_fork()
        if child == 0:
            mark("child.forked", parent=before, fork_started=started)
            namespace = fold_script_namespace()
            if namespace is not None:
                patch_fold_script(namespace)
                patch_keras()
        else:
            record({"name": "server.fork", "t0": started, "t1": time.monotonic(), "child": child})
        return child

    return fork


def traced_waitpid(original_waitpid):
    """os.waitpid that records, in the fold server, how long it waited for which fold process."""

    @functools.wraps(original_waitpid)
    def waitpid(pid, options):
        started = time.monotonic()
        outcome = original_waitpid(pid, options)
        if fold_script_namespace() is not None:  # the fold server reaping a fold (not subprocess's polling)
            record({"name": "server.waitpid", "t0": started, "t1": time.monotonic(), "child": outcome[0]})
        return outcome

    return waitpid


def traced_exit(original_exit):
    """os._exit that records the moment (a fold process ends with it after its result is written)."""

    @functools.wraps(original_exit)
    def _exit(code):
        mark("process.exit", code=code)
        original_exit(code)

    return _exit


def install():
    """Activate the tracing in this process (only called when XVAL_BENCH_TRACE is set)."""
    mark("process.start", argv=list(getattr(sys, "argv", [])), ppid=os.getppid())
    sys.meta_path.insert(0, PatchingFinder())
    sys.addaudithook(on_audit)
    os.fork = traced_fork(os.fork)
    os.waitpid = traced_waitpid(os.waitpid)
    os._exit = traced_exit(os._exit)


if TRACE_FILE:
    install()
