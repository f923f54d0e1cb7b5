"""A search: an instance of the routine whose strings give distributions, explored by Optuna, each trial an instance.

    experiment_dict[10] = ['task_type = "classification"', 'architecture = "EXAMPLE_model"',
                           'comment_1 = "search"', 'comment_2 = "lr and dropout"',
                           'learning_rate = loguniform(1e-4, 1e-2)', 'dropout = uniform(0.0, 0.5)',
                           'batch_size = choice(16, 32, 64)', 'num_epochs = intrange(4, 12, step=4)',
                           'search_trials = 12', 'search_sampler = "tpe"', 'search_seed = 0']

Trial t (Optuna's trial number, from 0) is instance S + t (S: the search's key), with its own run{S+t} files,
cross-validated on the experiment's folds like any instance. The ids S .. S + search_trials - 1 are the search's.

The study is an Optuna journal file in the experiment folder (search/run{S}.journal, Optuna's JournalFileBackend
with its open-lock, which works on NFS), so local workers, several routines and SLURM array tasks share it. A trial
is handed out under locks/search_run{S}.mutex: the next trial is a trial left running by a process that is gone
(its claim locks/run{R}.trial.lock is stale: same rule as a fold job's claim), else a new one while fewer than
search_trials exist; so a search ends with exactly search_trials trials, however often it is killed. After each
fold the trial reports the mean of its folds' validation main metric so far (step = fold number) and the pruner
may stop it: it is then recorded as pruned, never failed, and never chosen. Each new trial's sampler is seeded
from (search_seed, trial number), so a search is reproducible whatever the number of processes running it (a
grid's by search_seed alone: it orders the grid).
"""
import ast
import contextlib
import hashlib
import json
import math
import threading
import warnings
from dataclasses import dataclass, replace

from registries import HIGHER_IS_BETTER, MAIN_METRIC
from utility_functions import (XvalError, claim, file_mutex, heartbeat, heartbeat_age, heartbeat_interval,
                               lock_owner_alive, release)

DISTRIBUTIONS = {"uniform": "uniform(LOW, HIGH): a float", "loguniform": "loguniform(LOW, HIGH): a float, LOW > 0",
                 "intrange": "intrange(LOW, HIGH) or intrange(LOW, HIGH, step=STEP): a whole number, both ends in",
                 "choice": "choice(A, B, ...): one of the values"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
# search_* strings: (type, default); search_trials' default is the grid's size for a grid, else required
SETTINGS = {"search_trials": (int, None), "search_sampler": (str, "tpe"), "search_seed": (int, 0),
            "search_pruner": (str, None), "search_startup_trials": (int, 4)}
SPACE_FIXED = ("task_type", "comment_1", "comment_2")  # never searched: they name or define what is compared
INSTALL_HINT = "pip install -r requirements-search.txt"
FINISHED = ("complete", "pruned", "failed", "repeat")  # a trial's outcomes that end it (others leave it running)
REPEAT_ATTR = "xval_repeat_of"  # a trial's user attribute: the number of the earlier trial whose point it repeats


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: kind (a key of DISTRIBUTIONS) with low, high (and step for intrange) or choices."""
    name: str
    kind: str
    low: float = None
    high: float = None
    step: int = 1
    choices: tuple = ()

    def values(self):
        """The values a grid visits (intrange, choice), or the two ends (uniform, loguniform)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "intrange":
            return list(range(self.low, self.high + 1, self.step))
        return [self.low, self.high]

    def plain(self):
        """Whether every choice is a scalar Optuna can store as it is (else choices are stored as their repr)."""
        return all(value is None or isinstance(value, (bool, int, float, str)) for value in self.choices)

    def distribution(self):
        """The Optuna distribution of this dimension."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.kind == "choice":
            return CategoricalDistribution(self.choices if self.plain() else [repr(v) for v in self.choices])
        if self.kind == "intrange":
            return IntDistribution(self.low, self.high, step=self.step)
        return FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

    def grid(self):
        """The values of this dimension as Optuna's GridSampler stores them."""
        return [repr(v) for v in self.values()] if self.kind == "choice" and not self.plain() else self.values()

    def value(self, stored):
        """The parameter's value from what Optuna stored for it."""
        return ast.literal_eval(stored) if self.kind == "choice" and not self.plain() else stored


@dataclass(frozen=True)
class Search:
    """A search instance of the routine: its key (trial t is instance key + t), its fixed strings, its space and
    its settings (see SETTINGS)."""
    key: int
    fixed: tuple
    space: tuple
    trials: int
    sampler: str
    seed: int
    pruner: str
    startup_trials: int
    applies: tuple = ()  # a searched architecture: ((name, (architectures that take it)), ...) for the others' names

    def instances(self):
        """The instance ids of its trials."""
        return range(self.key, self.key + self.trials)

    def spec(self):
        """What defines the search, as JSON data: a study made with another spec is refused (comments aside)."""
        fixed = sorted(text for text in self.fixed if not text.split("=")[0].strip().startswith("comment_"))
        space = [[d.name, d.kind, d.low, d.high, d.step, [repr(v) for v in d.choices]] for d in self.space]
        return {"fixed": fixed, "space": space, "trials": self.trials, "sampler": self.sampler, "seed": self.seed,
                "pruner": self.pruner, "startup_trials": self.startup_trials}

    def trial_strings(self, number, stored):
        """The parameter strings of trial `number` whose Optuna parameters are `stored`: the fixed strings, its
        comment_2 followed by ' · trial {number}', and one 'name = value' per dimension; where the architecture is
        searched, a string only where the trial's architecture takes that parameter (see `applies`)."""
        values = {d.name: d.value(stored[d.name]) for d in self.space}
        architecture = values.get("architecture")
        applies = dict(self.applies)
        strings = []
        for text in self.fixed:
            name, _, value = text.partition("=")
            if name.strip() == "comment_2":
                text = f"comment_2 = {(str(ast.literal_eval(value.strip())) + f' · trial {number}')!r}"
            if architecture in applies.get(name.strip(), (architecture,)):
                strings.append(text)
        return tuple(strings) + tuple(f"{name} = {value!r}" for name, value in values.items()
                                      if architecture in applies.get(name, (architecture,)))


# ----------------------------------------------------------------------------------------------------------------
# The routine's strings in: a search is recognised, parsed and checked before anything runs

def assigned_call(text):
    """(name, call node) when text is 'name = function(...)', else None."""
    with contextlib.suppress(SyntaxError, AttributeError, TypeError, IndexError):
        statement = ast.parse(text.strip()).body[0]
        call = statement.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            return statement.targets[0].id, call
    return None


def distribution_call(text):
    """(name, call node) when text is 'name = DISTRIBUTION(...)', else None (an ordinary parameter string)."""
    found = assigned_call(text)
    return found if found and found[1].func.id in DISTRIBUTIONS else None


def unknown_distribution(text):
    """The name called in 'name = other(...)' when `other` is not a distribution (a misspelt one), else None."""
    found = assigned_call(text)
    return found[1].func.id if found and found[1].func.id not in DISTRIBUTIONS else None


def is_search(strings):
    """Whether an experiment_dict entry is a search: one of its strings is a distribution or a search_* setting."""
    return isinstance(strings, (list, tuple)) and any(
        isinstance(text, str) and (distribution_call(text) or text.split("=")[0].strip() in SETTINGS)
        for text in strings)


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_dimension(name, call, where):
    """A Dimension from 'name = kind(...)'; XvalError naming what is wrong and the form to use."""
    kind, form = call.func.id, DISTRIBUTIONS[call.func.id]
    try:
        args = [ast.literal_eval(node) for node in call.args]
        keywords = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    except ValueError:
        raise XvalError(f"{where}: {name} = {kind}(...) takes plain values only (numbers, strings, lists): "
                        f"{form}") from None
    if kind == "choice":
        if keywords or len(args) < 2:
            raise XvalError(f"{where}: {name} = choice(...) needs two values or more and no keyword: {form}")
        if len({json.dumps(value, sort_keys=True) for value in args}) < len(args):
            raise XvalError(f"{where}: {name} = choice(...) lists a value twice: list each once")
        return Dimension(name, kind, choices=tuple(args))
    step = keywords.pop("step", 1) if kind == "intrange" else 1
    if keywords or len(args) != 2:
        raise XvalError(f"{where}: {name} = {kind}(...) takes two ends{', and step=' if kind == 'intrange' else ''}: "
                        f"{form}")
    low, high = args
    whole = kind == "intrange"
    if not all(finite(v) and (not whole or isinstance(v, int)) for v in (low, high, step)):
        raise XvalError(f"{where}: {name} = {kind}({low!r}, {high!r}) needs finite {'whole ' if whole else ''}numbers:"
                        f" {form}")
    if not low < high or (kind == "loguniform" and low <= 0) or step < 1:
        shown = f"{low!r}, {high!r}" + (f", step={step!r}" if step != 1 else "")
        raise XvalError(f"{where}: {name} = {kind}({shown}) needs LOW < HIGH"
                        f"{', LOW > 0' if kind == 'loguniform' else ', step >= 1' if whole else ''}: {form}")
    if whole and (high - low) % step:
        raise XvalError(f"{where}: {name} = intrange({low}, {high}, step={step}): {high} is not reached from {low} in "
                        f"steps of {step}: make HIGH - LOW a multiple of step")
    return Dimension(name, kind, low, high, step)


def parse_search(key, strings, where):
    """The Search of experiment_dict[key] (is_search is true); every string checked, one XvalError line for the
    first problem. The parameters themselves are checked by check_search."""
    fixed, space, settings = [], {}, {}
    for position, text in enumerate(strings, 1):
        here = f"{where}, parameter {position}"
        found = distribution_call(text)
        name = found[0] if found else text.split("=")[0].strip()
        if name in space or name in settings:
            raise XvalError(f"{where}: {name} is assigned twice: keep one of the two strings")
        if found:
            if name in SPACE_FIXED or name.startswith("search_"):
                raise XvalError(f"{here}: {name} cannot be searched: give it one value")
            space[name] = parse_dimension(name, found[1], here)
        elif name in SETTINGS:
            from parameters import parse_parameter_string
            value = parse_parameter_string(text, here)[1]
            kind = SETTINGS[name][0]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise XvalError(f"{here}: {name} = {value!r} must be a {kind.__name__}")
            settings[name] = value
        elif name.startswith("search_"):
            from parameters import closest
            raise XvalError(f"{here}: unknown search setting '{name}': {closest(name, SETTINGS)}")
        elif unknown := unknown_distribution(text):
            from parameters import closest
            raise XvalError(f"{here}: '{text}' calls {unknown}(), which is not a distribution: "
                            f"{closest(unknown, DISTRIBUTIONS)}")
        else:
            fixed.append(text)
    clashes = [text.split("=")[0].strip() for text in fixed if text.split("=")[0].strip() in space]
    if clashes:
        raise XvalError(f"{where}: {clashes[0]} is given a value and a distribution: keep one of the two strings")
    if not space:
        raise XvalError(f"{where}: a search needs at least one distribution, e.g. 'learning_rate = loguniform(1e-4, "
                        "1e-2)'; without one, remove the search_* strings")
    values = {name: settings.get(name, default) for name, (_, default) in SETTINGS.items()}
    sampler = values["search_sampler"]
    if sampler not in SAMPLERS:
        raise XvalError(f"{where}: search_sampler = {sampler!r} is unknown: use one of {', '.join(SAMPLERS)}")
    pruner = values["search_pruner"] or ("none" if sampler == "grid" else "median")
    if pruner not in PRUNERS:
        raise XvalError(f"{where}: search_pruner = {pruner!r} is unknown: use one of {', '.join(PRUNERS)}")
    if "search_startup_trials" in settings and sampler != "tpe" and pruner != "median":
        raise XvalError(f"{where}: search_startup_trials = {settings['search_startup_trials']} has no effect with "
                        f"search_sampler = {sampler!r} and search_pruner = {pruner!r} (it delays TPE's model and the "
                        "median pruner): remove it")
    trials = values["search_trials"]
    if sampler == "grid":
        continuous = [d.name for d in space.values() if d.kind in ("uniform", "loguniform")]
        if continuous:
            raise XvalError(f"{where}: a grid search needs choice(...) or intrange(...), {continuous[0]} is "
                            f"{space[continuous[0]].kind}: list its values with choice(...)")
        if pruner != "none":
            raise XvalError(f"{where}: a grid search visits every point and prunes none: remove search_pruner")
        size = math.prod(len(d.values()) for d in space.values())
        if trials not in (None, size):
            raise XvalError(f"{where}: a grid search of this space has {size} points: search_trials = {size}, or "
                            "remove search_trials")
        trials = size
    if trials is None:
        raise XvalError(f"{where}: a search needs search_trials = N (how many trials in all, N >= 1)")
    if trials < 1 or values["search_startup_trials"] < 1:
        raise XvalError(f"{where}: search_trials and search_startup_trials must be 1 or more")
    if "search_startup_trials" in settings and values["search_startup_trials"] >= trials:
        raise XvalError(f"{where}: search_startup_trials = {values['search_startup_trials']} is not below "
                        f"search_trials = {trials}: every trial would be random and none pruned; lower it, or "
                        "raise search_trials")
    if not 0 <= values["search_seed"] < 2 ** 32:
        raise XvalError(f"{where}: search_seed = {values['search_seed']} must be a whole number from 0 to 2**32 - 1")
    return Search(key, tuple(fixed), tuple(space.values()), trials, sampler, values["search_seed"], pruner,
                  values["search_startup_trials"])


def with_conditions(search, taken):
    """The search with `applies` set where its architecture is searched: taken(architecture) -> the names of the
    parameters that architecture takes. A name some searched architectures do not take applies only to the
    trials of the others; a name none of them takes is refused."""
    architectures = next((d.values() for d in search.space if d.name == "architecture"), None)
    if architectures is None:
        return search
    names = [text.split("=")[0].strip() for text in search.fixed] + [d.name for d in search.space]
    takes = {architecture: taken(architecture) for architecture in architectures}
    applies = []
    for name in names:
        which = tuple(architecture for architecture in architectures if name in takes[architecture])
        if not which:
            raise XvalError(f"experiment_dict[{search.key}]: {name} is taken by none of the searched architectures "
                            f"({', '.join(map(str, architectures))}): remove it")
        if len(which) < len(architectures):
            applies.append((name, which))
    return replace(search, applies=tuple(applies))


def corners(search):
    """Trial parameter sets that together give every dimension each of its values (grid, choices) or ends: each
    dimension's values in turn, the others at their first."""
    first = {d.name: d.grid()[0] for d in search.space}
    return [dict(first, **{d.name: value}) for d in search.space for value in d.grid()]


def check_search(search, resolve, where):
    """Every corner of the space resolved like an instance (resolve(strings, where) -> parameters): a value of the
    wrong type, an argument one architecture would never receive, a backend not installed... is refused here.
    Returns the task type of the search (one, since task_type is not searched)."""
    task_types = set()
    continuous = [d for d in search.space if d.kind in ("uniform", "loguniform")]
    searched = next((d for d in search.space if d.name == "architecture"), None)
    if searched is not None:
        from parameters import architecture_signatures, closest
        signatures = architecture_signatures()
        unknown = next((value for value in searched.values() if value not in signatures), None)
        if unknown is not None:
            raise XvalError(f"{where}: architecture {unknown!r} (one of its choices) is not a model function of "
                            f"define_models.py: {closest(str(unknown), signatures)}")
    for stored in corners(search):
        shown = ", ".join(f"{name} = {value}" for name, value in stored.items())
        parameters = resolve(search.trial_strings(0, stored), f"{where} (the trial with {shown})")
        task_types.add(parameters["task_type"])
        whole = [d for d in continuous if isinstance(parameters.get(d.name), int)]
        if whole:  # its ends pass as whole numbers, and the first trial between them would fail after writing
            d = whole[0]
            ends = (math.ceil(d.low), math.floor(d.high))
            raise XvalError(f"{where}: {d.name} takes whole numbers, and {d.kind}({d.low}, {d.high}) draws "
                            f"fractions: use intrange({ends[0] if ends[0] < ends[1] else 'LOW'}, "
                            f"{ends[1] if ends[0] < ends[1] else 'HIGH'}) or choice(...)")
    return task_types.pop()


def check_optuna():
    """XvalError unless optuna is installed."""
    import importlib.util
    if importlib.util.find_spec("optuna") is None:
        raise XvalError(f"a search needs Optuna, which is not installed: {INSTALL_HINT}")


# ----------------------------------------------------------------------------------------------------------------
# The study: one journal file per search

def trial_seed(seed, number):
    """The sampler's seed for trial `number` of a search seeded `seed`: the same in whichever process asks."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


def make_sampler(search, number):
    import optuna
    seed = trial_seed(search.seed, number)
    if search.sampler == "grid":  # its seed orders the grid: the same in every process, or points would repeat
        return optuna.samplers.GridSampler({d.name: d.grid() for d in search.space}, seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials)


def make_pruner(search):
    import optuna
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=0)
    if search.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.NopPruner()


def changed_search_problem(layout, search):
    """--status, read-only: open_study's refusal when the search's journal holds trials of another search (its
    space, sampler, pruner or trials changed), or None (no journal yet, or the same search)."""
    import optuna
    paths = layout.search(search.key)
    if not paths.journal.is_file():
        return None
    storage = journal_storage(paths)
    name = f"run{search.key}"
    if name not in {study.study_name for study in storage.get_all_studies()}:
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    recorded, wanted = study.user_attrs.get("xval_search"), json.loads(json.dumps(search.spec()))
    if recorded is None or recorded == wanted or not study.get_trials(deepcopy=False):
        return None
    changed = [key for key in wanted if recorded.get(key) != wanted[key]]
    return (f"search {search.key}: {paths.journal} holds the trials of another search ({', '.join(changed)} "
            "changed): restore the search's strings, or give the new search another key or num_experiment")


def open_study(layout, search, task_type):
    """The search's Optuna study, made on first use; XvalError when its journal was made with another search."""
    import optuna
    paths = layout.search(search.key)
    storage = journal_storage(paths)
    higher = HIGHER_IS_BETTER[MAIN_METRIC[task_type]]
    name, sampler, pruner = f"run{search.key}", make_sampler(search, 0), make_pruner(search)
    if name in {study.study_name for study in storage.get_all_studies()}:  # load: a create would grow the journal
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    else:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                    direction="maximize" if higher else "minimize", load_if_exists=True)
    recorded, wanted = study.user_attrs.get("xval_search"), json.loads(json.dumps(search.spec()))
    if recorded is None or (recorded != wanted and not study.get_trials(deepcopy=False)):
        study.set_user_attr("xval_search", search.spec())  # new, or changed before any trial ran: nothing is lost
    elif recorded != wanted:
        raise XvalError(changed_search_problem(layout, search))
    return study


# ----------------------------------------------------------------------------------------------------------------
# One process's share of a search

class SearchRunner:
    """Hands out a search's trials to this process's workers and runs each one's folds in order.

    plan_trial(number, strings) -> PlannedInstance of trial `number` (its instance is search.key + number);
    run_fold(worker, planned, fold) -> foldjob.Attempt; collect(planned, pruned_at) -> foldjob.Collected."""

    def __init__(self, layout, search, task_type, grace):
        self.layout, self.search, self.grace = layout, search, grace
        self.metric = MAIN_METRIC[task_type]
        self.study = open_study(layout, search, task_type)
        self.lock = threading.Lock()  # the study object and `active` are shared by this process's workers
        self.active = set()  # trial numbers this process runs now
        self.busy = set()  # trials left running because a fold of theirs is run elsewhere: not taken again here

    def next_trial(self):
        """(trial, its strings) of the next trial for this process, its claim taken; None when the search has all
        its trials (finished or running elsewhere). A trial left running by a gone process is taken over first."""
        import optuna
        from optuna.trial import TrialState
        with self.lock, file_mutex(self.layout.search(self.search.key).mutex):
            trials = self.study.get_trials(deepcopy=False)
            for frozen in trials:
                if frozen.state == TrialState.RUNNING and frozen.number not in self.active | self.busy and \
                        claim(self.layout.trial_claim(self.search.key + frozen.number), self.grace) is None:
                    self.active.add(frozen.number)
                    return optuna.trial.Trial(self.study, frozen._trial_id), self.strings(frozen.number, frozen.params)
            if len(trials) >= self.search.trials:
                return None
            self.study.sampler = make_sampler(self.search, len(trials))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # GridSampler's note that a grid point may be visited twice
                trial = self.study.ask({d.name: d.distribution() for d in self.search.space})
            claim(self.layout.trial_claim(self.search.key + trial.number), self.grace)
            self.active.add(trial.number)
            return trial, self.strings(trial.number, trial.params)

    def repeated(self, trial):
        """The earlier finished trial (complete or pruned; an Optuna FrozenTrial) whose parameters this trial repeats
        exactly, or None. A repeat of a repeat names the first trial of the point."""
        from optuna.trial import TrialState
        with self.lock:
            trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        earlier = [frozen for frozen in trials if frozen.number < trial.number and frozen.params == trial.params
                   and REPEAT_ATTR not in frozen.user_attrs]
        return min(earlier, key=lambda frozen: frozen.number) if earlier else None

    def tell_repeat(self, trial, earlier):
        """Tell the study that trial repeats `earlier` (see repeated): its value, or pruned, without training."""
        from optuna.trial import TrialState
        with self.lock:
            trial.set_user_attr(REPEAT_ATTR, earlier.number)
            if self.search.sampler == "grid":  # see run_trial
                self.study.sampler = make_sampler(replace(self.search, sampler="random"), 0)
            if earlier.state == TrialState.COMPLETE:
                self.study.tell(trial, earlier.value, skip_if_finished=True)
            else:
                self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        release(self.layout.trial_claim(self.search.key + trial.number))
        with self.lock:
            self.active.discard(trial.number)

    def strings(self, number, stored):
        return self.search.trial_strings(number, stored)

    def abandon(self, trial):
        """Give a trial up without running it (its planning was refused): its claim released, left running."""
        release(self.layout.trial_claim(self.search.key + trial.number))
        with self.lock:
            self.active.discard(trial.number)

    def counts(self):
        """{complete, pruned, failed, repeat, running: number of the search's trials in that state} (from the
        journal; a repeat is a trial that repeated an earlier one's point and reused its result)."""
        from optuna.trial import TrialState
        names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                 TrialState.RUNNING: "running", TrialState.WAITING: "running"}
        with self.lock:
            trials = self.study.get_trials(deepcopy=False)
        found = ["repeat" if REPEAT_ATTR in trial.user_attrs else names[trial.state] for trial in trials]
        return {name: found.count(name) for name in ("complete", "pruned", "failed", "repeat", "running")}

    def run_trial(self, trial, planned, folds, run_fold, collect):
        """Run a trial's folds in order, reporting the mean validation main metric so far after each; returns
        (outcome, detail):
        complete (its mean validation value), pruned (the fold it stopped after), failed (the error line), busy (a
        fold of it is run by another process: left running) or interrupted (Ctrl-C or a signal: left running, the
        next run takes it over)."""
        from optuna.trial import TrialState
        lock = self.layout.trial_claim(planned.instance)
        outcome = ("interrupted", None)
        try:
            with heartbeat(lock, heartbeat_interval(self.grace)):
                outcome = self.trial_folds(trial, planned, folds, run_fold, collect)
            kind, detail = outcome
            with self.lock:
                if kind == "busy":
                    self.busy.add(trial.number)
                # GridSampler's after_trial calls study.stop() once the grid is visited, which only study.optimize()
                # allows: a grid's trials are told through a sampler that keeps no state (asking sets it again)
                if self.search.sampler == "grid":
                    self.study.sampler = make_sampler(replace(self.search, sampler="random"), 0)
                if kind == "complete":
                    self.study.tell(trial, detail, skip_if_finished=True)
                elif kind in ("pruned", "failed"):
                    self.study.tell(trial, state=TrialState.PRUNED if kind == "pruned" else TrialState.FAIL,
                                    skip_if_finished=True)
            return outcome
        finally:
            release(lock)
            with self.lock:
                self.active.discard(trial.number)

    def trial_folds(self, trial, planned, folds, run_fold, collect):
        """The folds of one trial (see run_trial), the pruner asked after each but the last."""
        from utility_functions import read_json
        seen = []  # the validation values of the folds so far
        for fold in folds:
            number = fold["fold"]
            if number - 1 in planned.missing:
                result = run_fold(planned, fold)
                if result.outcome in ("failed", "conflict"):
                    return "failed", result.detail
                if result.outcome == "busy":
                    return "busy", result.detail
                values = result.detail["metrics"]
            else:
                values = read_json(self.layout.fold(planned.instance, number).result)["metrics"]
            value = values.get("val", {}).get(self.metric)
            if value is None:
                continue
            seen.append(float(value))
            # the mean so far, not the fold's own value: folds differ in difficulty, and the pruner compares the
            # trial's best reported value with the others' at this step, so one lucky fold would protect a trial
            with self.lock, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a step already reported (a trial taken over) keeps its value
                trial.report(sum(seen) / len(seen), number)
                prune = number < len(folds) and trial.should_prune()
            if prune:
                collect(planned, number)
                return "pruned", number
        document = collect(planned, None).document
        if document["status"] != "complete":
            return "failed", document.get("error") or "not every fold has a result"
        return "complete", document["summary"]["val"][self.metric]["mean"]


def trial_line(search, number, planned, outcome, detail, metric):
    """The console line of a trial that ended (or stopped)."""
    label = f"search {search.key} trial {number} (instance {planned.instance}: " + ", ".join(
        f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {value}"
        for name, value in planned.trial["params"].items()) + ")"
    if outcome == "complete":
        return f"{label}: complete, mean validation {metric} {detail:.3f}"
    if outcome == "pruned":
        return f"{label}: pruned after fold {detail} (worse than the other trials there)"
    if outcome == "failed":
        return f"{label}: FAILED: {detail}"
    if outcome == "repeat":
        return f"{label}: repeats trial {detail} (the same parameters): its result reused, no fold trained"
    return f"{label}: {outcome}, left for the next run" + (f" ({detail})" if detail else "")


def journal_storage(paths):
    """The JournalStorage of a search's journal file (layout.search(key)): Optuna's file backend with its open-lock,
    a lock file made with O_EXCL, which NFS honours (Optuna's JournalFileOpenLock)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    paths.journal.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(paths.journal), lock_obj=JournalFileOpenLock(
        str(paths.journal_lock))))


def load_study(paths):
    """The study of an existing journal (layout.search(key)), for the views; its one study, whatever its name, or
    None when the journal holds none yet."""
    import optuna
    storage = journal_storage(paths)
    studies = storage.get_all_studies()
    return optuna.load_study(study_name=studies[0].study_name, storage=storage) if studies else None


def claimed(lock, grace):
    """Whether a claim file has a live owner (--status only: reads, never takes it)."""
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(owner, dict) and lock_owner_alive(owner, heartbeat_age(lock), grace)


def finished_trials(paths):
    """The numbers of the trials a search's journal (layout.search(key)) records as finished."""
    from optuna.trial import TrialState
    study = load_study(paths)
    return [trial.number for trial in study.get_trials(deepcopy=False)
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)] if study else []


def lost_trials(layout, search):
    """The instances of a search's trials that its journal records as finished but whose results JSON is gone
    (read only; [] without a journal or without Optuna)."""
    if not layout.search(search.key).journal.exists():
        return []
    try:
        numbers = finished_trials(layout.search(search.key))
    except ImportError:
        return []
    return [search.key + number for number in numbers if not layout.instance(search.key + number).result.exists()]


def search_status_line(layout, search, grace):
    """--status's line of a search: its trials by state, from its journal (read only); a running trial whose
    claim has no live owner (grace: [claims] grace_seconds) is one a gone process left, which the next run
    continues."""
    paths = layout.search(search.key)
    if not paths.journal.exists():
        return f"search {search.key}: no trial yet ({search.trials} to run, instances {search.key} to " \
               f"{search.key + search.trials - 1})"
    try:
        study = load_study(paths)
        states = ["repeat" if REPEAT_ATTR in trial.user_attrs else
                  "left" if trial.state.name == "RUNNING" and not claimed(layout.trial_claim(search.key + trial.number),
                                                                          grace) else trial.state.name.lower()
                  for trial in (study.get_trials(deepcopy=False) if study else [])]
    except ImportError:
        return f"search {search.key}: Optuna is not installed here ({INSTALL_HINT}) to read {paths.journal}"
    counts = ", ".join(f"{states.count(state)} {word}" for state, word in (
        ("complete", "complete"), ("pruned", "pruned"), ("fail", "failed"), ("repeat", "repeats of an earlier point"),
        ("running", "running"), ("left", "left running by a process or task that is gone: the next run continues "
                                           "them")) if state in states)
    return f"search {search.key}: {len(states)} of {search.trials} trials asked ({counts or 'none ended'})"
