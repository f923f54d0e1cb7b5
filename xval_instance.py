"""The experiment engine's front door: a routine script's settings and command line in, an exit code out.

A routine script (xval_routine_example.py, copied per experiment) ends with run_routine(...), which:
  1. reads the command line: which instances, which devices, and --smoke, --status or an executor's flag
     (--slurm) with that executor's options;
  2. makes the plan (plan.py): every selected instance resolved and checked, the dataset checked and
     fingerprinted, the experiment's folds, and which fold jobs are done; anything doubtful is refused (exit 2)
     before anything is written;
  3. accepts it (folds.json, description, code snapshot, parameters files) and hands it to the executor
     (executors.py: the local pool of workers by default, a SLURM array with --slurm), whose exit code it returns.
It imports no framework: the architectures' signatures are read from the source and training runs in fold
processes (launchers.py), so validation is instant and this process stays small however many instances it runs.
It is also what a batch scheduler's task runs: python3 xval_instance.py --fold-task FOLD_JOBS INDEX (a fold job), or
--search-task SEARCH_JSON INDEX (trials of the searches, until none is left).
"""
import signal
import sys
import threading
import time
from pathlib import Path


def _interrupted_while_importing(signum, frame):
    """Ctrl-C while the imports below run (a second or two after a routine starts): exit 130 as exit_on_user_error
    does later, without a traceback through the import machinery."""
    print("interrupted", file=sys.stderr)
    raise SystemExit(130)  # utility_functions.EXIT_INTERRUPTED, which is being imported


_QUIET_IMPORTS = threading.current_thread() is threading.main_thread() and \
    signal.getsignal(signal.SIGINT) is signal.default_int_handler  # only where nobody else handles Ctrl-C
if _QUIET_IMPORTS:
    signal.signal(signal.SIGINT, _interrupted_while_importing)

from executors import (DEFAULT_EXECUTOR, EXECUTORS, executor_class, executor_sections, run_fold_task,  # noqa: E402
                       run_search_task)
from foldjob import fold_state, read_if_readable, recorded_parameters  # noqa: E402
from layout import Layout  # noqa: E402
from parameters import declared_backends  # noqa: E402
from plan import accept, check_live_claims, make_plan  # noqa: E402
from search import changed_search_problem, is_search, lost_trials, parse_search, search_status_line  # noqa: E402
from utility_functions import (EXIT_DONE, EXIT_REFUSED, XvalError, exit_on_user_error, expand_path,  # noqa: E402
                               load_config, parse_config_value, whole_number)

if _QUIET_IMPORTS:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TASK_FLAG = "--fold-task"  # python3 xval_instance.py --fold-task FOLD_JOBS INDEX: one batch scheduler's task
SEARCH_TASK_FLAG = "--search-task"  # python3 xval_instance.py --search-task SEARCH_JSON INDEX: a search's batch task
TASKS = {TASK_FLAG: run_fold_task, SEARCH_TASK_FLAG: run_search_task}
MODES = ("smoke", "status")  # besides running: --smoke (each instance briefly), --status (each fold job's state)


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_devices(text, where):
    """Devices from the command line ('0,1,2,3', '-1,-1', '1') or gpu_ID (1, -1, [0, 1]) -> [int].

    Each entry is one worker: a fold process at a time on that CUDA device; -1 is a CPU worker. A device may be
    listed twice (two folds share it)."""
    values = text.split(",") if isinstance(text, str) else (text if isinstance(text, (list, tuple)) else [text])
    devices = []
    for value in values:
        if isinstance(value, str):
            try:
                value = whole_number(value)
            except ValueError:
                pass  # refused below
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise XvalError(f"{where}: devices must be CUDA device numbers or -1 (a CPU worker), e.g. 0 or 0,1,2,3 "
                            f"or -1,-1; got {text!r}")
        devices.append(value)
    if not devices:
        raise XvalError(f"{where}: no device given: name at least one (-1: a CPU worker)")
    return devices


def executor_options():
    """{command-line option: (executor name, key of its config section)} of every registered executor."""
    return {option: (name, key) for name in EXECUTORS for option, key in executor_class(name).options.items()}


def command_flags():
    """--smoke, --status and the flag of every executor but the default one."""
    return [f"--{mode}" for mode in MODES] + [f"--{name}" for name in EXECUTORS if name != DEFAULT_EXECUTOR]


def parse_command_line_usage(instance_ids, script_name):
    """The usage line of a routine script."""
    return (f"usage: python3 {script_name} [{' | '.join(command_flags())} [OPTIONS]] [FIRST_INSTANCE [LAST_INSTANCE "
            f"[DEVICES]]]  (instances defined: {', '.join(map(str, instance_ids))}; DEVICES: 0 or 0,1,2,3 or -1,-1; "
            f"OPTIONS: {' '.join(executor_options())}; -h: help)")


def parse_command_line(argv, instance_ids, default_devices, script_name):
    """[--smoke | --status | --EXECUTOR [OPTIONS]] [FIRST [LAST [DEVICES]]] -> {"mode": run|smoke|status|an
    executor's name, "selected": instance ids, "devices": [int], "options": {config key: text}}. One id alone
    selects that instance; an executor's OPTIONS (--time 1:00:00 or --time=1:00:00, ...) override its config.ini
    section for this launch."""
    flags = command_flags()
    options = executor_options()
    usage = parse_command_line_usage(instance_ids, script_name)
    modes, given, positional, words = [], {}, [], list(argv)
    while words:
        word = words.pop(0)
        name, equals, value = word.partition("=")
        if word == "--":  # the end of the options, as in every Unix command: the rest are arguments
            positional += words
            words = []
        elif word in flags:
            modes.append(word[2:])
        elif name in options:
            repeatable = options[name][1] == "extra_sbatch"
            if not equals:
                if not words or (words[0].startswith("--") and not repeatable):  # its value is an option
                    raise XvalError(f"{name} needs a value ({name} VALUE or {name}=VALUE) — {usage}")
                value = words.pop(0)
            if repeatable and not value.strip():
                raise XvalError(f"an empty {name} adds nothing: give an #SBATCH option, e.g. {name}=--qos=normal "
                                f"— {usage}")
            given[name] = f"{given[name]};{value}" if repeatable and name in given else value
        elif word.startswith("--"):
            raise XvalError(f"unknown option {word} — {usage}")
        else:
            positional.append(word)
    if len(modes) > 1:
        raise XvalError(f"{' and '.join('--' + mode for mode in modes)} cannot be combined — {usage}")
    mode = modes[0] if modes else "run"
    misplaced = [option for option in given if options[option][0] != mode]
    if misplaced:
        raise XvalError(f"{', '.join(misplaced)} only acts with --{options[misplaced[0]][0]} — {usage}")
    if len(positional) > 3:
        raise XvalError(f"too many arguments ({len(positional)}, at most 3) — {usage}")
    try:
        numbers = [whole_number(text) for text in positional[:2]]
    except ValueError:
        raise XvalError(f"instance numbers must be whole numbers, got {' '.join(positional[:2])!r} — {usage}") \
            from None
    first = numbers[0] if numbers else min(instance_ids)
    last = numbers[1] if len(numbers) > 1 else (first if numbers else max(instance_ids))
    if first > last:
        raise XvalError(f"first instance {first} is after last instance {last} — {usage}")
    selected = [instance for instance in instance_ids if first <= instance <= last]
    if not selected:
        raise XvalError(f"no instance between {first} and {last} — {usage}")
    if len(positional) > 2 and mode not in ("run", "smoke"):
        hint = executor_class(mode).devices_hint if mode in EXECUTORS else "it only reads the experiment folder"
        raise XvalError(f"--{mode} takes no DEVICES ({hint}) — {usage}")
    try:
        devices = parse_devices(positional[2], "DEVICES") if len(positional) > 2 else default_devices
    except XvalError as error:
        raise XvalError(f"{error} — {usage}") from None
    return {"mode": mode, "selected": selected, "devices": devices,
            "options": {options[option][1]: value for option, value in given.items()}}


def check_settings(settings):
    """The routine-level settings: types and ranges, one clear line for the first problem."""
    expected = {"description": str, "dataset": str, "num_experiment": int, "num_folds": int,
                "overwrite_results": bool, "debug_mode": bool, "experiment_dict": dict}
    for name, kind in expected.items():
        value = settings[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise XvalError(f"routine setting {name} = {value!r} must be a {kind.__name__}")
    parse_devices(-1 if settings["gpu_ID"] is None else settings["gpu_ID"],
                  f"routine setting gpu_ID = {settings['gpu_ID']!r}")
    if not settings["dataset"] or "/" in settings["dataset"] or "\\" in settings["dataset"]:
        raise XvalError(f"routine setting dataset = {settings['dataset']!r} must be a features name such as "
                        "'ravdess_demo', not a path")
    if settings["num_experiment"] < 0:
        raise XvalError(f"routine setting num_experiment = {settings['num_experiment']} must not be negative")
    folder = settings["experiment_folder"]
    if folder is not None and (not isinstance(folder, (str, Path)) or not str(folder).strip()):
        raise XvalError(f"routine setting experiment_folder = {folder!r} must be a folder (a path), or None for "
                        "config.ini's [paths] experiment_folder")
    if not settings["experiment_dict"]:
        raise XvalError("experiment_dict is empty: add at least one instance")
    bad_keys = [key for key in settings["experiment_dict"]
                if not isinstance(key, int) or isinstance(key, bool) or key < 0]
    if bad_keys:
        raise XvalError(f"experiment_dict keys must be whole numbers of 0 or more (instance ids), not {bad_keys[0]!r}")


def help_text(settings, script_name):
    """What --help (-h) prints for a routine script: its usage, what each part means, and the exit codes."""
    ids = sorted(key for key in settings.get("experiment_dict") or {} if isinstance(key, int)) or [1]
    lines = [parse_command_line_usage(ids, script_name), "",
             f"Runs this routine's instances ({', '.join(map(str, ids))}) with speaker-independent k-fold "
             "cross-validation; results in its experiment folder.",
             "  FIRST_INSTANCE [LAST_INSTANCE]  the instances to run (default: all; one number: that instance)",
             "  DEVICES         one worker per entry: 0, 0,1,2,3 (GPUs), -1 or -1,-1 (CPU workers); default gpu_ID",
             "  --smoke         each instance on fold 1 for one epoch of two batches, in a scratch folder",
             "  --status        each fold job: done, running, failed or pending"]
    for name in EXECUTORS:
        if name != DEFAULT_EXECUTOR:
            executor = executor_class(name)
            lines.append(f"  --{name:<13} {executor.about}; OPTIONS: {' '.join(executor.options)} override config.ini "
                         f"[{executor.section}]")
    lines += ["exit codes: 0 every selected instance complete, 1 an instance failed, 2 refused (one error line; "
              "nothing trained), 3 left to another process still running it, 4 an error of xval or the machine, "
              "130 interrupted"]
    return "\n".join(lines)


def read_command(settings, argv, routine_file):
    """The checked settings and command line: (parse_command_line's dict, config with the executor's options)."""
    check_settings(settings)
    default_devices = parse_devices(-1 if settings["gpu_ID"] is None else settings["gpu_ID"], "gpu_ID")
    command = parse_command_line(argv, sorted(settings["experiment_dict"]), default_devices, Path(routine_file).name)
    config = load_config(sections=executor_sections())
    if command["options"]:
        executor = executor_class(command["mode"])
        for key, text in command["options"].items():
            option = next(name for name, value in executor.options.items() if value == key)
            config[executor.section][key] = parse_config_value(text, executor.settings[key][0], Path.cwd(), option)
    return command, config


def experiment_path(settings, config, routine_file):
    """{experiment_folder}/experiment_{N}: ~ and $VARIABLES expanded; a relative experiment_folder is taken from the
    routine file's folder."""
    root = expand_path(settings["experiment_folder"], "experiment_folder") if settings["experiment_folder"] else \
        config["paths"]["experiment_folder"]
    if not root.is_absolute():
        root = Path(routine_file).resolve().parent / root
    return root / f"experiment_{settings['num_experiment']}"


# ----------------------------------------------------------------------------------------------------------------
# --status, and a launch

def print_instance_status(layout, instance, num_folds, grace, changed=None, pruned_after=None, planned=None):
    """--status lines of one instance: its fold jobs' counts by state, then one line per fold job. changed: the
    parameters the routine now gives it otherwise than its results record (a run refuses to reuse them);
    pruned_after: the fold after which a search's pruner stopped this trial (its later folds are never trained);
    planned: its PlannedInstance in the plan a run would make now (its missing folds are those a run trains)."""
    def verdict(fold):
        return None if planned is None else "retrained" if fold - 1 in planned.missing else "reused"
    states = [fold_state(layout, instance, fold, grace, verdict(fold)) for fold in range(1, num_folds + 1)]
    if pruned_after:
        states = [f"not trained: the trial was pruned after fold {pruned_after}" if fold > pruned_after and
                  state == "pending" else state for fold, state in enumerate(states, 1)]
    counts = {word: sum(state.startswith(word) for state in states)
              for word in ("done", "running", "failed", "stale", "pending", "not trained")}
    print(f"instance {instance}: " + ", ".join(f"{n} {word}" for word, n in counts.items() if n) +
          (f"; its results were made with other parameters than the routine gives now ({', '.join(changed)} "
           "changed): a run refuses to reuse them (overwrite_results = True retrains it)" if changed else ""))
    for fold, state in enumerate(states, 1):
        print(f"  fold {fold}: {state}")


def changed_since(layout, instance, strings, config, settings):
    """The parameters of a hand-written instance that its strings now resolve otherwise than its results record
    (names; foldjob.recorded_parameters), or None when they agree, it has no results yet, or its strings do not
    resolve (a run says why)."""
    from parameters import architecture_signatures, changed_parameters, parameter_hash, resolve_instance
    if recorded_parameters(layout, instance, settings["num_folds"], None)[0] is None:  # no results yet
        return None
    try:
        parameters = resolve_instance(strings, config["training"], architecture_signatures(),
                                      f"experiment_dict[{instance}]")
    except XvalError:
        return None
    current = parameter_hash(parameters, layout.dataset, settings["num_folds"])
    recorded_hash, recorded = recorded_parameters(layout, instance, settings["num_folds"], current)
    if recorded_hash is None:
        return None
    return changed_parameters(recorded, parameters) or [
        "the dataset, num_folds or the parameter_hash its results record"]


def status_plan(settings, config, selected, experiment_dir):
    """(the plan a run of the selected instances would make now, None) or (None, the line it would refuse with):
    every reuse check a run makes, read-only, so that --status never calls done what a run refuses or retrains."""
    try:
        plan = make_plan(settings, config, selected, experiment_dir, claims=False)
    except XvalError as error:
        return None, str(error)
    try:  # a fold trained now by another routine with other parameters: a run refuses, the fold lines show it running
        for planned in plan.instances:
            check_live_claims(plan.layout, planned, plan.claim_grace)
    except XvalError as error:
        return plan, str(error)
    problems = [changed_search_problem(plan.layout, planned.search) for planned in plan.searches] + \
        [executor_class(name).plan_refusal(plan) for name in EXECUTORS]  # a search's journal, a scheduler's queue
    return plan, next((problem for problem in problems if problem), None)


def print_status(settings, config, selected, routine_file):
    """--status: the line a run would refuse with, if any; each selected instance's fold jobs, from the experiment
    folder and the plan a run would make; then each scheduler's lines for the experiment's jobs. Returns 0."""
    layout = Layout(experiment_path(settings, config, routine_file), settings["dataset"], settings["num_experiment"])
    print(f"xval: experiment {layout.experiment} on '{layout.dataset}' in {layout.root}")
    if not any(path.exists() for path in (layout.folds, layout.results, layout.locks)):
        print(f"xval: {layout.root} holds no experiment yet (no folds.json, results or claims): nothing of this "
              "routine has run there (check experiment_folder and num_experiment)")
        return EXIT_DONE
    plan, refusal = status_plan(settings, config, selected, layout.root)
    if refusal:
        print(f"xval: a run of these instances would now refuse: {refusal}")
    planned = {entry.instance: entry for entry in plan.instances} if plan else {}
    for key in selected:
        strings = settings["experiment_dict"][key]
        instances, lost = [key], []
        if is_search(strings):
            search = parse_search(key, strings, f"experiment_dict[{key}]")
            print(search_status_line(layout, search, config["claims"]["grace_seconds"]))
            folds = range(1, settings["num_folds"] + 1)
            instances = [instance for instance in search.instances() if layout.instance(instance).result.exists()
                         or any(path.exists() for fold in folds for path in (layout.fold(instance, fold).lock,
                                                                             layout.fold(instance, fold).stopped))]
            lost = lost_trials(layout, search)
            for instance in lost:
                print(f"instance {instance}: trial {instance - key} finished, but its results "
                      f"{layout.instance(instance).result.name} are missing (deleted?): a run refuses until they are "
                      "restored")
        changed = None if is_search(strings) or settings["overwrite_results"] else \
            changed_since(layout, key, strings, config, settings)
        for instance in instances:
            recorded = read_if_readable(layout.instance(instance).result)
            if isinstance(recorded, dict) and recorded.get("status") == "repeat":
                gone = recorded.get("repeat_of") in lost
                print(f"instance {instance}: repeat of trial {recorded.get('repeat_of', key) - key} (instance "
                      f"{recorded.get('repeat_of')}): " + ("the result it stands for is missing (deleted?)" if gone else
                                                           "its result stands for this trial, no fold of its own"))
                continue
            pruned = recorded.get("pruned_after_fold") if isinstance(recorded, dict) and \
                recorded.get("status") == "pruned" else None
            print_instance_status(layout, instance, settings["num_folds"], config["claims"]["grace_seconds"], changed,
                                  pruned, planned.get(instance))
    for name in EXECUTORS:
        for line in executor_class(name).status_lines(layout):
            print(line)
    return EXIT_DONE


def prepare(settings, command, config, routine_file):
    """(the executor the command line chose, the plan): everything that can be refused, refused before anything is
    written. A local run starts its workers' fold servers first, of the backends the selected instances name
    (parameters.declared_backends), so that their import (~6 s) runs while this process makes the plan, and those of
    any other backend the plan's folds use once it is made; a refusal stops them at once."""
    name = DEFAULT_EXECUTOR if command["mode"] in ("run", "smoke") else command["mode"]
    executor = executor_class(name)(config, command["devices"], command["argv"], routine_file, command["started"])
    executor.check()
    try:
        if command["mode"] == "run":  # -0.88 s a run (median of 7, benchmarks/tweaks.py: e_early_server)
            for backend in declared_backends(settings["experiment_dict"], command["selected"],
                                             config["training"]["backend"]):
                executor.warm_up(backend)  # the instances' own: a JAX routine's first fold waited 8.3 -> 4.6 s
        import results_to_excel  # noqa: F401  (needed after the first instance; imported now, beside TensorFlow)
        plan = make_plan(settings, config, command["selected"], experiment_path(settings, config, routine_file),
                         reuse=command["mode"] != "smoke")
        journals = [] if command["mode"] == "smoke" else \
            [changed_search_problem(plan.layout, planned.search) for planned in plan.searches]
        if any(journals):  # a journal of another search: refused before the description and snapshot are written
            raise XvalError(next(problem for problem in journals if problem))
        executor.validate(plan)
        if command["mode"] == "run":  # the servers of the other backends the folds use: a JAX routine's first
            for backend in dict.fromkeys(planned.parameters["backend"] for planned, _ in plan.missing_jobs()):
                executor.warm_up(backend)  # fold waited 2.7 s less for its server (one run each, loaded machine)
    except BaseException:
        executor.abort()
        raise
    return executor, plan


def launch(settings, argv, routine_file):
    """Run the routine; returns the exit code (see run_routine). --status: print_status(); --smoke: the local
    executor's smoke run; otherwise the plan goes to the executor the command line chose."""
    started = time.monotonic()
    if {"-h", "--help"} & set(argv):
        print(help_text(settings, Path(routine_file).name))
        return EXIT_DONE
    command, config = read_command(settings, argv, routine_file)
    if command["mode"] == "status":
        return print_status(settings, config, command["selected"], routine_file)
    executor, plan = prepare(settings, dict(command, argv=argv, started=started), config, routine_file)
    if command["mode"] == "smoke":
        return executor.smoke(plan)
    executor.phases["validate"] = time.monotonic() - started
    try:
        accept(plan, routine_file)
    except BaseException:
        executor.abort()
        raise
    executor.phases["setup"] = time.monotonic() - started - executor.phases["validate"]
    for warning in plan.warnings:
        print(f"xval: WARNING: {warning}", flush=True)
    if not plan.identity["speaker_independent"]:
        print(f"xval: WARNING: dataset '{plan.layout.dataset}' folds by {plan.identity['foldable_item']}: one "
              "speaker's clips can be in training and test, so the results are speaker-dependent", flush=True)
    if config["baseline"]["enabled"]:
        from baseline import ensure_baselines  # scikit-learn only; read by the summary, so the views wait for it
        executor.beside(lambda say: ensure_baselines(plan, say=say))
    return executor.run(plan)


ROUTINE_SETTINGS = ("description", "gpu_ID", "dataset", "num_experiment", "num_folds", "experiment_folder",
                    "overwrite_results", "debug_mode", "experiment_dict")


def check_routine_call(settings):
    """The keywords a routine script passed to run_routine: XvalError naming an unknown one (a typo) or the missing
    ones, instead of Python's TypeError traceback."""
    from parameters import closest
    unknown = [name for name in settings if name not in ROUTINE_SETTINGS]
    if unknown:
        raise XvalError(f"run_routine(...) got {unknown[0]} = {settings[unknown[0]]!r}, which is not a routine "
                        f"setting: {closest(unknown[0], ROUTINE_SETTINGS)}")
    missing = [name for name in ROUTINE_SETTINGS if name not in settings]
    if missing:
        raise XvalError(f"run_routine(...) lacks {', '.join(missing)}: pass every setting as "
                        "xval_routine_example.py does")
    return settings


def run_routine(argv=None, **settings):
    """Run a routine script's instances; exits the process: 0 every selected instance is complete, 1 one failed,
    2 refused (one line; nothing trained), 3 some were left to another process running them, 4 an error of xval or
    the machine, 130 interrupted (README: exit codes).

    The keyword arguments are the routine script's settings of the same names, ROUTINE_SETTINGS (gpu_ID: a device
    number, -1 for the CPU, or a list of them: one worker each); argv defaults to sys.argv[1:] (see
    parse_command_line).
    Parameter strings come only from experiment_dict, i.e. from the user's own routine file.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    routine_file = getattr(sys.modules.get("__main__"), "__file__", None) or "routine.py"
    code = exit_on_user_error(lambda: launch(check_routine_call(settings), argv, routine_file),
                              debug=settings.get("debug_mode") is True)
    raise SystemExit(code)


if __name__ == "__main__":
    USAGE = (f"usage: python3 xval_instance.py {TASK_FLAG} FOLD_JOBS INDEX | {SEARCH_TASK_FLAG} SEARCH_JSON INDEX "
             "(what a batch scheduler's task runs, written by --slurm; a routine script, e.g. "
             "xval_routine_example.py, is what you run)")
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(USAGE)
        raise SystemExit(EXIT_DONE)
    if len(sys.argv) != 4 or sys.argv[1] not in TASKS:
        print(USAGE, file=sys.stderr)
        raise SystemExit(EXIT_REFUSED)
    raise SystemExit(exit_on_user_error(lambda: TASKS[sys.argv[1]](sys.argv[2], sys.argv[3])))
