"""Executors: interchangeable ways to run a plan's missing fold jobs, behind one interface, chosen by name.

    EXECUTORS = {"local": "executor_local", "slurm": "executor_slurm"}

The local executor (the default) runs the fold jobs on a pool of workers, one per listed device of this machine;
the SLURM executor submits them as a job array (`--slurm`). Both run the same plan (plan.py) through the same
fold-job protocol (foldjob.py) and start training.py through launchers.py. A third scheduler is one new module
with an Executor subclass named EXECUTOR, plus one line in EXECUTORS (see the README, "Writing an executor").

A batch scheduler's task runs one fold job of a submission: `python3 xval_instance.py --fold-task FOLD_JOBS INDEX`
(run_fold_task): it claims the job, trains it in a fresh process on the resources the scheduler gave it, and
assembles the instance's results JSON; a SIGTERM (cancelled, preempted, out of time) releases the claim and
records no failure.
"""
import contextlib
import importlib
import os
import signal
import sys
import time
from pathlib import Path

from foldjob import (attempt, build_job, collect_instance, instance_record, job_layout, read_job, report_attempt,
                     upgrade_job)
from launchers import ProcessLauncher, fold_environment
from plan import plan_trial, search_plan_from_document, write_parameters_file
from search import FINISHED, SearchRunner, trial_line
from utility_functions import (EXIT_DONE, EXIT_FAILED, HOST, XvalError, atomic_write_json, file_mutex, read_json,
                               slurm_job_id)

EXECUTORS = {"local": "executor_local", "slurm": "executor_slurm"}  # name (--name selects it): module
DEFAULT_EXECUTOR = "local"


class Executor:
    """Runs a plan's missing fold jobs. Subclasses set name (--{name} selects it on the command line; the default
    executor is selected without a flag), section and settings (its config.ini section's name and keys, or None and
    {}) and options ({command-line option: key of that section}, which override config.ini for one launch).

    The facade calls, in order: check() (refuse before anything is written, e.g. a scheduler that is not there),
    warm_up(backend) (start what takes long while the plan is made), beside(work) (the baseline: work the views
    need but no fold does), then run(plan) -> exit code, or abort() when the plan was refused.
    status_lines(layout) adds the scheduler's own lines to --status, plan_refusal(plan) what its validate() would
    refuse from its queue.
    """
    name = None
    section = None
    settings = {}  # {key of its config.ini section: (kind as in CONFIG_SCHEMA, default text where the file lacks it)}
    options = {}
    devices_hint = "the scheduler allocates them"  # why DEVICES on the command line mean nothing to it
    about = ""  # what its flag does, for the routine's --help

    def __init__(self, config, devices, argv, routine_file, started=None):
        self.config, self.devices, self.argv, self.routine_file = config, devices, list(argv), routine_file
        self.started = time.monotonic() if started is None else started  # the launch's start (time.monotonic)
        self.phases = {}  # {phase: seconds} of this launch, for its record (the facade adds validate and setup)

    def check(self):
        pass

    def warm_up(self, backend):
        pass

    def validate(self, plan):
        """Refuse, before anything is written, what this executor cannot do with the plan."""

    def beside(self, work):
        """Do work(say) (say: prints one line) before the folds, its seconds the launch's "baseline" phase: an
        executor that can do it while its folds run overrides this, and makes every view it builds wait for it
        (LocalExecutor)."""
        started = time.monotonic()
        work(lambda line: print(line, flush=True))
        self.phases["baseline"] = time.monotonic() - started

    def abort(self):
        pass

    def run(self, plan):
        raise NotImplementedError

    @staticmethod
    def status_lines(layout):
        return []

    @classmethod
    def plan_refusal(cls, plan):
        """--status: the line this executor's validate() would refuse plan with, from what it can read without
        submitting anything (its queue), or None."""
        return None


def executor_class(name):
    """The Executor subclass registered as name."""
    return importlib.import_module(EXECUTORS[name]).EXECUTOR


def executor_sections():
    """{section: settings} of every registered executor that has settings, for utility_functions.load_config."""
    classes = [executor_class(name) for name in EXECUTORS]
    return {cls.section: cls.settings for cls in classes if cls.section}


def rebuild_spreadsheet(layout, debug=False):
    """Rebuild the experiment's spreadsheet under a lock; a failure is reported but loses no result."""
    import results_to_excel  # here, not at the top: pandas, xlsxwriter and matplotlib, which a task may not need
    try:
        with file_mutex(layout.spreadsheet_mutex):
            return results_to_excel.write_spreadsheet(layout.root)
    except Exception as error:
        if debug:
            raise
        print(f"warning: the spreadsheet was not rebuilt ({type(error).__name__}: {error}); the results are "
              f"safe in results/; rebuild with python3 results_to_excel.py {layout.root}", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------------------------------------------
# A batch scheduler's task: one fold job of a submission

def stop_on_sigterm(*_):
    """A scheduler stops a task with SIGTERM (cancelled, preempted, requeued, out of time): the fold is not failed,
    its claim is released on the way out (exit code 143), and the next attempt trains it from the start."""
    raise SystemExit(128 + signal.SIGTERM)


def record_stop(job, task_started):
    """Write the stopped record of the fold job a batch task was running when its scheduler sent SIGTERM (its job,
    when, seconds since the task started: time.monotonic() at task_started), for --status and the next --slurm."""
    with contextlib.suppress(OSError):
        atomic_write_json(job_layout(job).fold(job["instance"], job["fold"]).stopped, {
            "host": HOST, "slurm_job": slurm_job_id(), "at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.monotonic() - task_started, 1)})


def check_task_file(path, flag, name):
    """XvalError unless a batch task's file exists (the task is run by hand, or its submission folder was moved)."""
    if not Path(path).is_file():
        raise XvalError(f"{flag} {path} does not exist: give the {name} of a submission folder "
                        "(EXPERIMENT/slurm/{time}_{pid}/)")


def submission_job(submission, index):
    """The fold job at index of a submission file: fold_jobs.json (a list of job documents), or the fold_jobs.txt
    of a submission made before xval 2 (a job file path per line)."""
    check_task_file(submission, "--fold-task", "fold_jobs.json")
    jobs = Path(submission).read_text(encoding="utf-8").splitlines() if Path(submission).suffix == ".txt" else \
        read_json(submission)
    if not 0 <= index < len(jobs):
        raise XvalError(f"task index {index} is out of range: {submission} holds {len(jobs)} fold jobs"
                        + (f" (indices 0 to {len(jobs) - 1})" if jobs else ""))
    if Path(submission).suffix == ".txt":
        return read_job(Path(jobs[index]))
    return upgrade_job(jobs[index], submission)


def run_fold_task(submission, index):
    """A batch task: the fold job at index of the submission file, trained in a fresh training.py process on the
    devices and cores the scheduler allocated. Exit code 0 when the fold is done (now or before) or being run
    elsewhere, 1 when it failed."""
    job = submission_job(submission, int(index))
    task_started = time.monotonic()

    def stopped(*_):  # the scheduler's SIGTERM: said in the fold's record for --status and the next submission
        record_stop(job, task_started)
        stop_on_sigterm()
    signal.signal(signal.SIGTERM, stopped)
    scheduler = f"SLURM job {slurm_job_id()}, " if slurm_job_id() else ""
    where = f"{HOST} ({scheduler}GPU {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'})"
    launcher = ProcessLauncher(fold_environment(job["parameters"]["backend"], job["threads"]), where)

    def launch(job_path, log_path):
        code, error_line = launcher.run(job_path, log_path, job["label"])
        if code == -signal.SIGTERM:  # the fold was stopped with the task, not failed
            stopped()
        return code, error_line

    started = time.monotonic()
    result = attempt(job, launch)
    changed = report_attempt(lambda line, stream=None: print(line, file=stream or sys.stdout, flush=True), job,
                             result, time.monotonic() - started, where)
    if changed:
        rebuild_spreadsheet(job_layout(job))
    return EXIT_FAILED if result.outcome in ("failed", "conflict") else EXIT_DONE


# ----------------------------------------------------------------------------------------------------------------
# A search's trial, on whatever runs its folds; and a batch scheduler's task that runs trials until none is left

def run_one_trial(plan, planned_search, runner, task, run_fold, say):
    """One trial handed out by runner.next_trial() (task): planned as an instance, its parameters file written, its
    folds run in order by run_fold(planned, fold) -> foldjob.Attempt, its line said. Returns its outcome (see
    SearchRunner.run_trial)."""
    trial, strings = task
    try:
        planned = plan_trial(plan, planned_search, trial.number, strings)
        write_parameters_file(plan.layout, planned)
    except BaseException:
        runner.abandon(trial)
        raise
    def collect(planned, pruned_at):
        return collect_instance(plan.layout, planned.instance, instance_record(plan, planned), pruned_at)
    earlier = runner.repeated(trial)
    if earlier is not None:  # the sampler proposed a point already run: the same folds would train again
        collect_instance(plan.layout, planned.instance, instance_record(plan, planned),
                         repeat_of=planned_search.search.key + earlier.number)
        runner.tell_repeat(trial, earlier)
        outcome, detail = "repeat", earlier.number
    else:
        outcome, detail = runner.run_trial(trial, planned, plan.folds, run_fold, collect)
    say(trial_line(planned_search.search, trial.number, planned, outcome, detail, runner.metric))
    return outcome


def run_search_task(submission, index):
    """A batch task of a search submission (search.json: plan.search_plan_document): trials of each search, asked
    one after the other from the shared journal, until the searches have all their trials; each fold in a fresh
    training.py process on the resources the scheduler allocated. Exit code 0 (a failed trial is a result)."""
    check_task_file(submission, "--search-task", "search.json")
    plan = search_plan_from_document(read_json(submission))
    task_started, current = time.monotonic(), {}

    def stopped(*_):  # as a fold task's: the fold it was training says it was stopped
        if current:
            record_stop(current["job"], task_started)
        stop_on_sigterm()
    signal.signal(signal.SIGTERM, stopped)
    scheduler = f"SLURM job {slurm_job_id()}, " if slurm_job_id() else ""
    where = f"{HOST} ({scheduler}task {index}, GPU {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'})"
    threads = len(os.sched_getaffinity(0))

    def say(line, stream=None):
        print(line, file=stream or sys.stdout, flush=True)

    def run_fold(planned, fold):
        job = current["job"] = build_job(plan, planned, fold, threads)
        launcher = ProcessLauncher(fold_environment(planned.parameters["backend"], threads), where)

        def launch(job_path, log_path):
            code, error_line = launcher.run(job_path, log_path, job["label"])
            if code == -signal.SIGTERM:
                stopped()
            return code, error_line
        started = time.monotonic()
        result = attempt(job, launch)
        report_attempt(say, job, result, time.monotonic() - started, where)
        return result

    for planned_search in plan.searches:
        runner = SearchRunner(plan.layout, planned_search.search, planned_search.task_type, plan.claim_grace)
        while (task := runner.next_trial()) is not None:
            if run_one_trial(plan, planned_search, runner, task, run_fold, say) in FINISHED:
                rebuild_spreadsheet(plan.layout, plan.debug)
    return EXIT_DONE
