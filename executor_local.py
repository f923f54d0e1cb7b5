"""The local executor: a plan's missing fold jobs on a pool of workers, one per listed device of this machine.

Each worker (a CUDA device, or -1: a share of the CPU cores) runs one fold job at a time through a fork-server
launcher of its own per backend (launchers.py), in a thread of the routine process; the workers take the fold jobs
in order (instance by instance, fold by fold), so the folds of one instance run at the same time on different
devices. The cores are shared equally: each fold process computes with cores / workers threads. Ctrl-C stops
every worker's fold at once, records no failure and releases every claim before the routine exits. Also here:
the console (one line per fold, the ETA), the launch record logs/launch_*.json, and the smoke run (--smoke).
"""
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import replace

import numpy as np

from executors import Executor, rebuild_spreadsheet, run_one_trial
from foldjob import (attempt, build_job, collect_instance, ended_text, fold_state, format_seconds,
                     instance_done_line, instance_record, report_attempt)
from plan import plan_trial
from search import FINISHED, SearchRunner, corners
from launchers import INTERRUPTED_EXIT, ForkServerLauncher, fold_environment, no_gpu_warning
from utility_functions import EXIT_DONE, EXIT_ELSEWHERE, EXIT_FAILED, HOST, XvalError, atomic_write_json

WAIT_SLICE = 0.5  # seconds: how often the routine's main thread, waiting for its workers, looks for a Ctrl-C
SMOKE_BATCHES = 2  # batches per split of a smoke run's fold


def available_cores():
    """The CPU cores this process may run on (its affinity, which SLURM and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def worker_threads(workers, cores):
    """Threads per fold process when `workers` fold processes share `cores` cores: an equal part, at least 1."""
    return max(1, cores // workers)


class Worker:
    """One device of this machine (a CUDA device, or -1: a share of the CPU cores) running one fold at a time,
    with a fork-server launcher per Keras backend, each started on first use."""

    def __init__(self, device, threads, label, show_progress=False):
        self.device, self.threads, self.label, self.show_progress = device, threads, label, show_progress
        self.launchers = {}
        self.warned = set()  # the backends already said to see no GPU on this worker's device

    def launcher(self, backend):
        """The running launcher of backend (started now if it is not yet)."""
        if backend not in self.launchers:
            self.launchers[backend] = ForkServerLauncher(fold_environment(backend, self.threads, self.device),
                                                         show_progress=self.show_progress)
            self.launchers[backend].start()
        return self.launchers[backend]

    def on_cpu(self, backend):
        """Whether this GPU worker's backend saw no GPU on its device (so its folds run on the CPU)."""
        return self.device >= 0 and backend in self.launchers and self.launchers[backend].seen == "cpu"

    def where(self, backend):
        """Where this worker's last fold of backend ran, for its line: its label, '(no GPU: CPU)' when on_cpu."""
        return f"{self.label} (no GPU: CPU)" if self.on_cpu(backend) else self.label

    def no_gpu_warning(self, backend):
        """The one warning line that backend sees no GPU on this worker's device, the first time only; else None."""
        if not self.on_cpu(backend) or backend in self.warned:
            return None
        self.warned.add(backend)
        return no_gpu_warning(self.label, backend, "list -1 for a CPU worker")

    def abort(self):
        for launcher in self.launchers.values():
            launcher.abort()

    def close(self):
        for launcher in self.launchers.values():
            launcher.close()


def rewritten_text(differs):
    """What a complete instance's rewritten results JSON now records, after '; ' (differs: Collected.differs)."""
    if {"folds", "summary"} & set(differs):
        return ("; its results JSON now takes the metrics of its fold results (results/folds/), which differ from "
                "what it recorded: a fold result edited by hand, or restored? No fold is retrained")
    return ("; its results JSON now records its strings as the routine writes them (comments, order or spelling "
            "edited; the same parameters, so no fold is retrained)")


def make_workers(devices, cores, show_progress=False):
    """A Worker per listed device; the cores are shared equally between them (threads per fold process)."""
    threads = worker_threads(len(devices), cores)
    cpu_numbers = iter(range(1, len(devices) + 1))
    return [Worker(device, threads, f"GPU {device}" if device >= 0 else
                   f"CPU worker {next(cpu_numbers)}" if devices.count(-1) > 1 else "CPU", show_progress)
            for device in devices]


class LocalExecutor(Executor):
    """The fold jobs on this machine's listed devices (see the module docstring)."""
    name = "local"

    def __init__(self, config, devices, argv, routine_file, started=None):
        super().__init__(config, devices, argv, routine_file, started)
        self.show_progress = sys.stdout.isatty() and len(devices) == 1  # one \r epoch line: one fold at a time
        self.workers = make_workers(devices, available_cores(), self.show_progress)
        self.lock = threading.Lock()  # the workers' threads share fold_runs, phases and the console
        self.interrupted = False  # set on Ctrl-C: a fold ending now was stopped, not failed
        self.fold_runs = []  # [{"instance", "fold", "device", "seconds", "exit_code"}]: this launch's fold processes
        self.background = None  # beside()'s thread and its outcome ({"seconds", "error"}), or None
        self.rebuilds = {"wanted": False, "thread": None, "error": None}  # request_rebuild()'s, under self.lock

    def warm_up(self, backend):
        """Start every worker's fold server of backend (if not yet): its import runs while the plan is made."""
        for worker in self.workers:
            worker.launcher(backend)

    def beside(self, work):
        """work(self.say) in a thread of its own, while the first folds run (the baseline: a demo routine of 8 folds
        -0.7 s); every spreadsheet rebuild and the end of run() wait for it (wait_beside), its seconds recorded as
        the launch's "baseline" phase."""
        outcome = {}

        def run():
            started = time.monotonic()
            try:
                work(self.say)
            except BaseException as error:  # raised again in the thread that waits for it
                outcome["error"] = error
            outcome["seconds"] = time.monotonic() - started

        self.background = (threading.Thread(target=run, daemon=True), outcome)
        self.background[0].start()

    def wait_beside(self):
        """Wait for beside()'s work, and raise what it raised. Every caller waits (two workers' threads may rebuild
        the spreadsheet at once: neither may go on before the work is done)."""
        if self.background is None:
            return
        thread, outcome = self.background
        thread.join()
        with self.lock:
            self.phases["baseline"] = outcome["seconds"]
        if "error" in outcome:
            raise outcome["error"]

    def abort(self):
        for worker in self.workers:
            worker.abort()

    def say(self, line, stream=None):
        """Print one line for the user, whole (the workers' threads print too)."""
        with self.lock:
            print(line, file=stream or sys.stdout, flush=True)

    def eta(self, left):
        """Seconds until `left` more fold jobs are done: the mean time of this launch's completed folds times the
        rounds the workers need for them (left / workers, rounded up); None before a fold has completed or when
        left is None (unknown)."""
        seconds = [run["seconds"] for run in self.fold_runs if run["exit_code"] == 0]
        if not seconds or left is None:
            return None
        return float(np.mean(seconds)) * math.ceil(left / len(self.workers))

    def add_phase(self, phase, started):
        """Add the seconds since time.monotonic() gave started to the launch's phase."""
        with self.lock:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.monotonic() - started

    def timed_rebuild(self, plan, phase="spreadsheet"):
        """rebuild_spreadsheet (after beside()'s work), its time added to the launch's phase: "spreadsheet" where
        the routine waits for it, "spreadsheet_beside" where it runs while folds do (request_rebuild)."""
        self.wait_beside()
        started = time.monotonic()
        rebuild_spreadsheet(plan.layout, plan.debug)
        self.add_phase(phase, started)

    def request_rebuild(self, plan):
        """timed_rebuild in a thread of its own, so that the worker whose fold completed an instance (or a trial)
        goes on to its next fold meanwhile (a demo instance's rebuild took the worker 1.0-1.3 s, its two plots most
        of it). A request made while a rebuild runs is served by one more after it; debug_mode rebuilds at once, in
        the caller's thread, so that a failure stops the routine there. finish_rebuilds() waits for the last."""
        if plan.debug:
            self.timed_rebuild(plan)
            return
        with self.lock:
            self.rebuilds["wanted"] = True
            if self.rebuilds["thread"] is None:
                self.rebuilds["thread"] = threading.Thread(target=self.rebuild_while_wanted, args=(plan,), daemon=True)
                self.rebuilds["thread"].start()

    def rebuild_while_wanted(self, plan):
        """request_rebuild()'s thread: rebuild until no request is left; an error is kept for finish_rebuilds()."""
        while True:
            with self.lock:
                if not self.rebuilds["wanted"] or self.rebuilds["error"] is not None:
                    self.rebuilds["thread"] = None
                    return
                self.rebuilds["wanted"] = False
            try:
                self.timed_rebuild(plan, "spreadsheet_beside")
            except BaseException as error:
                with self.lock:
                    self.rebuilds["error"] = error

    def finish_rebuilds(self, raise_error=True):
        """Wait for request_rebuild()'s rebuilds (the wait added to the "spreadsheet" phase), and raise what one
        raised (raise_error False: on the way out of an error, which that would hide)."""
        started = time.monotonic()
        while True:
            with self.lock:
                thread, error = self.rebuilds["thread"], self.rebuilds["error"]
            if thread is None:
                break
            thread.join(WAIT_SLICE)  # in slices: a Ctrl-C is acted on at once (see run_pool)
        self.add_phase("spreadsheet", started)
        if error is not None and raise_error:
            raise error

    # ---- one fold job on one worker, and the pool of workers

    def run_on_worker(self, plan, worker, planned, fold, left):
        """One fold job on one worker: claim it, run it, report it. Returns foldjob.attempt's Attempt. left() counts
        the fold jobs not finished yet, for the ETA (None: unknown, as in a search)."""
        job = build_job(plan, planned, fold, worker.threads)
        backend = planned.parameters["backend"]
        launcher = worker.launcher(backend)

        def launch(job_path, log_path):
            if self.interrupted:  # Ctrl-C came while this fold was being claimed: train nothing
                raise KeyboardInterrupt
            started = time.monotonic()
            code, error_line = launcher.run(job_path, log_path, job["label"])
            if self.interrupted or code == INTERRUPTED_EXIT:  # stopped by Ctrl-C, not failed: no failure record
                raise KeyboardInterrupt  # (the fold's own exit code says so even before this thread hears of it)
            with self.lock:
                self.fold_runs.append({"instance": planned.instance, "fold": fold["fold"], "device": worker.label,
                                       "seconds": round(time.monotonic() - started, 3), "exit_code": code})
            if warning := worker.no_gpu_warning(backend):
                self.say(warning, sys.stderr)
            return code, error_line

        started = time.monotonic()
        result = attempt(job, launch)
        changed = report_attempt(self.say, job, result, time.monotonic() - started, worker.where(backend),
                                 self.eta(left()) if result.outcome == "trained" else None)
        if result.outcome == "failed" and plan.debug:
            log = plan.layout.fold(planned.instance, fold["fold"]).log
            self.say(log.read_text(encoding="utf-8", errors="replace")[-6000:], sys.stderr)
        if changed:
            self.request_rebuild(plan)
        return result

    def run_pool(self, take, do):
        """Each worker's thread runs do(worker, task) for each task = take(state) until take gives None, state["stop"]
        is set (do returning True sets it) or one raises (every worker stops; the error is raised here). Ctrl-C stops
        every worker's fold at once, lets each release its claims, and is raised again."""
        state = {"stop": False, "error": None, "begun": 0, "running": 0}
        finished = threading.Condition(self.lock)  # notified as each worker's thread ends

        def work(worker):
            with self.lock:
                state["begun"], state["running"] = state["begun"] + 1, state["running"] + 1
            try:
                while not state["stop"] and (task := take(state)) is not None:
                    stop = do(worker, task)
                    with self.lock:
                        state["stop"] = state["stop"] or bool(stop)
            except BaseException as error:  # a refusal or a bug: stop every worker, raise it in the main thread
                state["stop"], state["error"] = True, state["error"] or error
            finally:
                with finished:
                    state["running"] -= 1
                    finished.notify_all()

        def wait_for_workers(every_one):
            """Until no worker runs a task (and, with every_one, each has begun and ended). Not Thread.join(): on
            Python 3.11 a join that Ctrl-C interrupts can mark a running thread as ended (CPython issue 90882), and
            the routine would exit while a worker still holds its fold's claim. The wait wakes every WAIT_SLICE
            seconds: a Ctrl-C that reaches a worker's thread (or lands just as this thread goes to sleep) is acted
            on then, not only when a fold ends."""
            with finished:
                while not finished.wait_for(lambda: state["running"] == 0 and
                                            (state["begun"] == len(self.workers) or not every_one), WAIT_SLICE):
                    pass

        try:
            for worker in self.workers:
                threading.Thread(target=work, args=(worker,), daemon=True).start()
            wait_for_workers(every_one=True)
        except KeyboardInterrupt:  # stop the folds, let each worker release its claim, then stop
            with self.lock:  # a worker that begins after this takes no task
                self.interrupted, state["stop"] = True, True
            for worker in self.workers:
                worker.abort()
            wait_for_workers(every_one=False)
            raise
        if state["error"] is not None:
            raise state["error"]

    def run_fold_jobs(self, plan, jobs):
        """Run the fold jobs [(planned, fold)] on the workers, a thread each taking the next job in order; the rest
        of an instance is dropped once one of its folds failed (and everything stops at the first failure in
        debug_mode). Returns {instance: {outcome: [details]}} for trained, done, busy, failed and conflict."""
        pending, outcomes, counts = deque(jobs), {}, {"active": 0}

        def take(state):
            with self.lock:
                while pending and not state["stop"]:
                    planned, fold = pending.popleft()
                    if not {"failed", "conflict"} & set(outcomes.get(planned.instance, {})):
                        counts["active"] += 1
                        return planned, fold
                return None

        def left():
            return len(pending) + counts["active"] - 1

        def do(worker, job):
            result = self.run_on_worker(plan, worker, *job, left)
            with self.lock:
                counts["active"] -= 1
                outcomes.setdefault(job[0].instance, {}).setdefault(result.outcome, []).append(result.detail)
            return result.outcome == "failed" and plan.debug

        self.run_pool(take, do)
        return outcomes

    def run_search(self, plan, planned_search):
        """A search's trials on the workers, each worker asking for the next trial when it is free (search.py).
        Returns the search's outcome: complete (all its trials finished, one at least complete), failed (all its
        trials failed), busy (trials running elsewhere) or stopped."""
        search = planned_search.search
        runner = SearchRunner(plan.layout, search, planned_search.task_type, plan.claim_grace)
        self.say(f"search {search.key}: {search.trials} trials ({search.sampler} sampler, {search.pruner} pruner), "
                 f"instances {search.key} to {search.key + search.trials - 1}, journal "
                 f"{plan.layout.relative(plan.layout.search(search.key).journal)}")

        def take(state):
            return None if state["stop"] else runner.next_trial()

        def do(worker, task):
            outcome = run_one_trial(plan, planned_search, runner, task, lambda planned, fold: self.run_on_worker(
                plan, worker, planned, fold, lambda: None), self.say)
            if outcome in FINISHED:
                self.request_rebuild(plan)
            return outcome == "failed" and plan.debug

        self.run_pool(take, do)
        self.finish_rebuilds()
        counts = runner.counts()
        self.say(f"search {search.key}: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n) +
                 f" of {search.trials} trials")
        finished = sum(counts[outcome] for outcome in FINISHED)
        if finished == search.trials:
            return "complete" if counts["complete"] else "failed"
        return "busy" if counts["running"] else "stopped"

        # ---- the launch

    def instance_outcome(self, plan, planned, outcomes):
        """After the workers: complete | skipped (complete before this launch) | failed | conflict (another routine
        trains it with other parameters) | busy (a fold left to another process) | stopped (not run: debug_mode
        stopped first). The results JSON of an instance whose folds are all
        done is assembled once more (its last fold may have landed in another process that was killed meanwhile)."""
        if outcomes.get("failed"):
            return "failed"
        if outcomes.get("conflict"):
            return "conflict"
        if planned.missing and not outcomes:
            return "stopped"
        collected = collect_instance(plan.layout, planned.instance, instance_record(plan, planned))
        if outcomes.get("busy"):  # left to another process, which may have completed the instance meanwhile
            return "complete" if collected.status == "complete" else "busy"
        if collected.status != "complete":
            claimed = [fold["fold"] for fold in plan.folds if fold_state(plan.layout, planned.instance, fold["fold"],
                                                                         plan.claim_grace).startswith("running")]
            if claimed:  # its folds were done here, and another process retrains one now (its overwrite_results)
                self.say(f"instance {planned.instance}: fold {', '.join(map(str, claimed))} is being trained again "
                         "by another process (overwrite_results = True there?): left to it")
                return "busy"
            return "stopped"
        if not planned.missing:
            if collected.before == "complete":
                self.say(f"instance {planned.instance}: complete already, skipped (overwrite_results = False)"
                         + (rewritten_text(collected.differs) if collected.changed else ""))
                if collected.changed:
                    self.timed_rebuild(plan)
                return "skipped"
            self.say(instance_done_line(collected.document, plan.num_folds, f"instance {planned.instance}"))
            self.timed_rebuild(plan)
        return "complete"

    def write_launch_record(self, plan, outcomes):
        """logs/launch_{time}_{host}_{pid}.json: what this launch ran and where its time went (phases in seconds,
        and each fold process's wall time seen from here; each fold result holds the fold's own breakdown)."""
        atomic_write_json(plan.layout.launch_record(time.strftime("%Y%m%d-%H%M%S"), HOST, os.getpid()), {
            "host": HOST, "pid": os.getpid(), "arguments": self.argv, "instances": plan.selected,
            "devices": [worker.device for worker in self.workers], "threads_per_fold": self.workers[0].threads,
            "outcomes": {str(instance): outcome for instance, outcome in outcomes.items()},
            "phases": {phase: round(seconds, 3) for phase, seconds in self.phases.items()},
            "fold_runs": self.fold_runs})

    def run(self, plan):
        """Run the plan's missing fold jobs; returns the exit code: 0 every selected instance is complete, 1 one
        failed, 3 none failed but some were left to another process running them (not complete yet)."""
        cpu_workers, cores = self.devices.count(-1), available_cores()
        if cpu_workers > cores:
            self.say(f"xval: WARNING: {cpu_workers} CPU workers share {cores} cores: each fold gets 1 thread and they "
                     f"take turns; list at most {cores} (-1,-1,...)")
        self.say(f"xval: experiment {plan.layout.experiment} on '{plan.layout.dataset}', instances "
                 f"{', '.join(map(str, plan.selected))}, {plan.num_folds} folds, on "
                 f"{', '.join(worker.label for worker in self.workers)} ({self.workers[0].threads} thread(s) per "
                 f"fold) -> {plan.layout.root}")
        outcomes = {}
        try:
            by_instance = self.run_fold_jobs(plan, plan.missing_jobs())
            self.finish_rebuilds()
            for planned in plan.instances:
                outcomes[planned.instance] = self.instance_outcome(plan, planned, by_instance.get(planned.instance,
                                                                                                 {}))
            for planned_search in plan.searches:
                outcomes[planned_search.search.key] = self.run_search(plan, planned_search)
        finally:
            close_started = time.monotonic()
            for worker in self.workers:
                worker.close()
            self.phases["close_server"] = time.monotonic() - close_started
            self.finish_rebuilds(raise_error=False)  # a rebuild under way ends (its temporary file with it)
        self.wait_beside()
        if not {"complete", "failed"} & set(outcomes.values()):
            self.timed_rebuild(plan)  # nothing changed: one rebuild makes sure the spreadsheet is there
        self.phases["total"] = time.monotonic() - self.started
        self.write_launch_record(plan, outcomes)
        counts = {status: [i for i, s in outcomes.items() if s == status]
                  for status in ("complete", "skipped", "failed", "conflict", "busy", "stopped")}
        searches = {planned_search.search.key for planned_search in plan.searches}
        print(f"xval: done in {format_seconds(time.monotonic() - self.started)}: " +
              ", ".join(f"{len(ids)} {status} (" + ", ".join(f"search {i}" if i in searches else str(i) for i in ids)
                        + ")" for status, ids in counts.items() if ids) + f". Results: {plan.layout.root}")
        print_choice(plan.layout)
        if counts["failed"]:
            print(f"xval: {len(counts['failed'])} instance(s) failed; see their logs. Fix and rerun: completed folds "
                  "are kept", file=sys.stderr)
            if plan.debug:
                print(f"debug_mode: stopped at the first failure (instance {counts['failed'][0]})", file=sys.stderr)
        if counts["conflict"]:
            print(f"xval: instance(s) {', '.join(map(str, counts['conflict']))} not trained: another routine on this "
                  "experiment folder trains them with other parameters (see the lines above; exit code 1)",
                  file=sys.stderr)
        if counts["failed"] or counts["stopped"] or counts["conflict"]:
            return EXIT_FAILED
        if counts["busy"]:
            print(f"xval: instance(s) {', '.join(map(str, counts['busy']))} are being run by another process and are "
                  "not complete yet (exit code 3): rerun this routine when it is done to check", file=sys.stderr)
            return EXIT_ELSEWHERE
        return EXIT_DONE

    def smoke(self, plan):
        """Each selected instance (and a search's first trial: each dimension at its first value) on the first fold
        for one epoch of SMOKE_BATCHES batches, in a scratch folder that is deleted afterwards: one line per instance
        (ok or its error) with its seconds. Returns the exit code (0
        all ok, 1 one failed). Nothing is written into the experiment folder."""
        scratch, failed = plan.elsewhere(tempfile.mkdtemp(prefix="xval-smoke-")), []
        print(f"xval: smoke run of instances {', '.join(map(str, plan.selected))}: fold 1, 1 epoch, "
              f"{SMOKE_BATCHES} batches each, in {scratch.layout.root}, one at a time, in turn on "
              f"{', '.join(worker.label for worker in self.workers)}", flush=True)
        try:
            scratch.layout.logs.mkdir(parents=True)
            trials = [plan_trial(scratch, planned_search, 0, planned_search.search.trial_strings(
                0, corners(planned_search.search)[0])) for planned_search in scratch.searches]
            for index, planned in enumerate([*scratch.instances, *trials]):
                worker = self.workers[index % len(self.workers)]  # every listed device gets used when it can
                quick = replace(planned, parameters=dict(planned.parameters, num_epochs=1))
                job = build_job(scratch, quick, scratch.folds[0], worker.threads, smoke_batches=SMOKE_BATCHES)
                paths = scratch.layout.fold(planned.instance, 1)
                atomic_write_json(paths.job, job)
                started, backend = time.monotonic(), planned.parameters["backend"]
                code, error_line = worker.launcher(backend).run(paths.job, paths.log, f"instance {planned.instance}")
                error = None if code == 0 else error_line or ended_text(code)
                print(f"instance {planned.instance} on {worker.where(backend)}: "
                      f"{'ok' if error is None else 'FAILED: ' + error} ({time.monotonic() - started:.1f} s)",
                      flush=True)
                if warning := worker.no_gpu_warning(backend):
                    print(warning, file=sys.stderr)
                if error:
                    failed.append(planned.instance)
        finally:
            for worker in self.workers:
                worker.close()
            shutil.rmtree(scratch.layout.root, ignore_errors=True)
        print(f"xval: smoke run: {len(plan.selected) - len(failed)} ok, {len(failed)} failed; nothing was written "
              f"to {plan.layout.root}")
        return EXIT_FAILED if failed else EXIT_DONE


def print_choice(layout):
    """Print which instance is chosen on validation and the test number to report, from the summary JSON that
    the last spreadsheet rebuild wrote (nothing if there is none)."""
    import collect  # here, not at the top: pandas and scipy, which planning never needs
    try:
        summaries = collect.read_routine_summary(layout.root)
        searches = collect.read_routine_summary(layout.root, "searches")
    except (XvalError, OSError) as error:  # a view: a damaged summary loses nothing, the spreadsheet rebuilds it
        print(f"warning: the routine's summary cannot be shown ({error})", file=sys.stderr)
        return
    for summary in summaries.values():
        for line in collect.honest_lines(summary)[:2] + collect.baseline_lines(summary):
            print(f"xval: {line}")
    for entry in searches.values():
        for line in collect.search_lines(entry):
            print(f"xval: {line}")


EXECUTOR = LocalExecutor
