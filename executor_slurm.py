"""The SLURM executor (--slurm): a plan's missing fold jobs as one job array, then a job that rebuilds the spreadsheet.

It writes slurm/{time}_{pid}/ into the experiment folder: fold_jobs.json (the job documents of this submission),
folds.sbatch (array task i runs `python3 xval_instance.py --fold-task fold_jobs.json i`: executors.run_fold_task,
the fold-job protocol in a fresh training.py process on the GPU and cores SLURM allocated), spreadsheet.sbatch
(submitted with --dependency=afterany on the array) and submitted.json (the job ids). Settings: config.ini [slurm],
each overridable on the command line (OPTIONS).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from executors import Executor, rebuild_spreadsheet
from foldjob import build_job, read_if_readable, stopped_text
from plan import differing_parameters, search_plan_document
from utility_functions import (EXIT_DONE, HOST, PROJECT_DIR, SLURM_LIVE_STATES, XvalError, atomic_write_json,
                               atomic_write_text, config_path_in_use, read_json)

TASK_FLAG = "--fold-task"  # python3 xval_instance.py --fold-task FOLD_JOBS INDEX: one array task
SEARCH_TASK_FLAG = "--search-task"  # python3 xval_instance.py --search-task SEARCH_JSON INDEX: one search task
# config.ini [slurm]: {key: (kind, default where the file lacks it)}
SETTINGS = {"partition": (str, ""), "time": (str, "02:00:00"), "mem": (str, "16G"), "cpus_per_task": (int, "4"),
            "gres": (str, "gpu:1"), "max_parallel": (int, "8"), "extra_sbatch": (str, "")}
OPTIONS = {"--partition": "partition", "--time": "time", "--mem": "mem", "--cpus-per-task": "cpus_per_task",
           "--gres": "gres", "--max-parallel": "max_parallel", "--sbatch-line": "extra_sbatch"}


# #SBATCH options the scripts set themselves, which an extra line would override: {option: (short, how to set it)}
OWN_SBATCH = {"--array": ("-a", "--max-parallel caps the tasks at once"), "--job-name": ("-J", "--status finds "
              "the jobs by it"), "--output": ("-o", "the logs go to the experiment's logs/slurm_*.out"),
              "--error": ("-e", "the logs go to the experiment's logs/slurm_*.out"), "--dependency": ("-d", "the "
              "spreadsheet job follows the array"), "--open-mode": (None, "a requeued task appends to its log"),
              "--requeue": (None, "a preempted task runs again"), "--no-requeue": (None, "a preempted task runs again"),
              "--cpus-per-task": ("-c", "use --cpus-per-task"), "--partition": ("-p", "use --partition"),
              "--time": ("-t", "use --time"), "--mem": (None, "use --mem"), "--gres": (None, "use --gres")}
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize (task indices 0 to 1000)


def own_option(word, name, short):
    """Whether an #SBATCH line's first word sets the option `name` (short: its one-letter form or None): the option
    itself, an abbreviation sbatch accepts (--arr for --array), or the short form with its value attached (-oFILE)."""
    if word.startswith("--"):
        return len(word) > 2 and name.startswith(word)
    return bool(short) and word[:2] == short


def slurm_job_name(dataset, experiment):
    """The name of an experiment's SLURM jobs (as squeue lists them)."""
    return f"xval_{dataset}_exp{experiment}"


def sbatch_value(text):
    """A value for an #SBATCH line: in double quotes when it holds a space (sbatch reads those as one word)."""
    if '"' in text or "\n" in text or "\r" in text:
        raise XvalError(f"{text!r} holds a double quote or a line break, which an #SBATCH line cannot carry: rename "
                        "the folder or dataset for --slurm (a local run takes any path)")
    return f'"{text}"' if any(character.isspace() for character in text) else text


def sbatch_lines(slurm):
    """#SBATCH lines of [slurm]'s resource settings (empty ones left to the cluster's defaults)."""
    lines = [f"#SBATCH --{option}={sbatch_value(slurm[key])}" for option, key in
             (("partition", "partition"), ("time", "time"), ("mem", "mem"), ("gres", "gres")) if slurm[key]]
    lines += [f"#SBATCH {line.strip()}" for line in slurm["extra_sbatch"].split(";") if line.strip()]
    return lines


def array_script(plan, slurm, about, count, flag, document_path):
    """An sbatch job array of `count` tasks (at most [slurm] max_parallel at once, requeued when preempted), task i
    running `python3 xval_instance.py FLAG DOCUMENT i`; about: the comment lines that say what a task does."""
    layout = plan.layout
    cap = f"%{slurm['max_parallel']}" if slurm["max_parallel"] else ""
    return "\n".join([
        "#!/bin/bash",
        *about,
        f"#SBATCH --job-name={sbatch_value(slurm_job_name(layout.dataset, layout.experiment))}",
        f"#SBATCH --array=0-{count - 1}{cap}",
        f"#SBATCH --cpus-per-task={slurm['cpus_per_task']}",
        *sbatch_lines(slurm),
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={sbatch_value(str(layout.slurm_output('%A_%a')))}",
        "",
        f"export XVAL_CONFIG={shlex.quote(str(config_path_in_use()))}",
        f"cd {shlex.quote(str(PROJECT_DIR))}",
        f"exec {shlex.quote(sys.executable)} xval_instance.py {flag} {shlex.quote(str(document_path))} "
        '"$SLURM_ARRAY_TASK_ID"', ""])


def fold_array_script(plan, slurm, list_path, count, command_line):
    """The sbatch script of the fold jobs listed in list_path: array task i runs entry i (0-based)."""
    layout = plan.layout
    instances = [planned.instance for planned in plan.instances]
    return array_script(plan, slurm, [
        f"# xval: experiment {layout.experiment} on '{layout.dataset}', {count} fold job(s) of instances "
        f"{', '.join(map(str, instances))},",
        f"# written by: {command_line}",
        f"# Array task i trains the fold job at entry i (0-based) of {list_path.name}, unless it is done already or",
        "# being run by a live process; preempted or on a failed node, SLURM requeues the task and the fold starts",
        "# again. Submitting this script again runs whatever is not done."], count, TASK_FLAG, list_path)


def search_array_script(plan, slurm, document_path, count, command_line):
    """The sbatch script of a plan's searches: `count` array tasks, each asking the searches' journals for trials
    until none is left (executors.run_search_task)."""
    layout = plan.layout
    return array_script(plan, slurm, [
        f"# xval: experiment {layout.experiment} on '{layout.dataset}', search(es) "
        f"{', '.join(str(s.search.key) for s in plan.searches)},",
        f"# written by: {command_line}",
        "# Each array task asks the search journal for the next trial and runs its folds, until every trial is",
        "# handed out; a trial of a task that was stopped is taken over by a later task or run."],
        count, SEARCH_TASK_FLAG, document_path)


def trials_left(plan):
    """How many trials of the plan's searches are not finished (new, or running), the most of any search."""
    from search import SearchRunner
    left = [planned.search.trials - sum(count for state, count in SearchRunner(
        plan.layout, planned.search, planned.task_type, plan.claim_grace).counts().items() if state != "running")
        for planned in plan.searches]
    return max(left, default=0)


def spreadsheet_script(plan, slurm):
    """The sbatch script that rebuilds the spreadsheet (submitted to run after the fold array, however it ends)."""
    layout, slurm = plan.layout, dict(slurm, gres="")
    return "\n".join([
        "#!/bin/bash",
        "# xval: rebuild the spreadsheet from the fold results, once the fold jobs' array has ended",
        f"#SBATCH --job-name={sbatch_value(slurm_job_name(layout.dataset, layout.experiment) + '_spreadsheet')}",
        "#SBATCH --cpus-per-task=1",
        *sbatch_lines(slurm),
        f"#SBATCH --output={sbatch_value(str(layout.slurm_output('spreadsheet_%j')))}",
        "",
        f"cd {shlex.quote(str(PROJECT_DIR))}",
        f"exec {shlex.quote(sys.executable)} results_to_excel.py {shlex.quote(str(layout.root))}", ""])


def sbatch_command():
    """The path of sbatch, or an XvalError saying where --slurm must run."""
    command = shutil.which("sbatch")
    if command is None:
        raise XvalError("sbatch is not on PATH: --slurm submits to a SLURM cluster; run it on the cluster's login "
                        "node (or run the routine locally, without --slurm)")
    return command


def sbatch(arguments, script=None):
    """Submit with sbatch --parsable (the script from stdin when given as text); returns the job id, or raises
    XvalError with sbatch's own message."""
    completed = subprocess.run([sbatch_command(), "--parsable", *map(str, arguments)], capture_output=True,
                               text=True, input=script)
    if completed.returncode != 0:
        message = " ".join(completed.stderr.split()) or f"exit code {completed.returncode}"
        raise XvalError(f"sbatch refused the submission ({message}): check the [slurm] section of config.ini or "
                        "the --slurm options")
    return completed.stdout.strip().split(";")[0]


def max_array_size():
    """The cluster's MaxArraySize (scontrol show config): an array's task indices must be below it; SLURM's default,
    1001, where scontrol does not say."""
    command = shutil.which("scontrol")
    completed = subprocess.run([command, "show", "config"], capture_output=True, text=True) if command else None
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", completed.stdout if completed else "", re.MULTILINE)
    return int(match[1]) if match else DEFAULT_MAX_ARRAY_SIZE


def queued_fold_jobs(layout):
    """{"run{R}_fold{F}": (array job, its job: the entry of the submission's fold_jobs.json)} of the fold jobs of
    this experiment's earlier submissions whose array task SLURM still holds (pending, running, requeued), from
    their submitted.json and squeue."""
    squeue, queued = shutil.which("squeue"), {}
    for path in sorted(layout.slurm.glob("*/submitted.json")) if squeue else []:
        try:
            record = read_json(path)
            if not record.get("array_job"):
                continue  # a submission of searches only: no fold job of its own
            names = [Path(entry).name.removesuffix(".job.json") for entry in record["fold_jobs"]]
            jobs = read_if_readable(path.with_name("fold_jobs.json"))
            jobs = dict(zip(names, jobs)) if isinstance(jobs, list) else {}
            listed = subprocess.run([squeue, "-h", "-r", "-j", str(record["array_job"]), "-o", "%K %T"],
                                    capture_output=True, text=True, timeout=60)
        except (XvalError, OSError, KeyError, TypeError, subprocess.TimeoutExpired):
            continue  # a damaged record or an unanswered squeue: that array is not counted as queued
        for index, state in (line.split()[:2] for line in listed.stdout.splitlines() if len(line.split()) >= 2):
            if index.isdigit() and int(index) < len(names) and state in SLURM_LIVE_STATES:
                queued[names[int(index)]] = (record["array_job"], jobs.get(names[int(index)]))
    return queued


def check_queued_parameters(plan, queued):
    """XvalError when a missing fold job of the plan is queued (queued_fold_jobs) with other parameters: that array
    task would train those."""
    for planned, fold in plan.missing_jobs():
        name = f"run{planned.instance}_fold{fold['fold']}"
        array, queued_job = queued.get(name, (None, None))
        if isinstance(queued_job, dict) and queued_job.get("parameter_hash") not in (None, planned.hash):
            raise XvalError(f"fold job {name} is queued in SLURM array {array} with other parameters "
                            f"({differing_parameters(queued_job, planned)} differ): scancel {array} first, then "
                            "submit again")


def standing_stop(paths):
    """The stopped record of a fold job (FoldPaths) unless its fold landed after the stop (a requeued task that
    finished it), or None."""
    record = read_if_readable(paths.stopped)
    try:
        if paths.result.stat().st_mtime >= paths.stopped.stat().st_mtime:
            return None
    except OSError:  # no result (or no record): the stop stands, if recorded
        pass
    return record


class SlurmExecutor(Executor):
    """The fold jobs as the tasks of a SLURM job array (see the module docstring)."""
    name = "slurm"
    section, settings, options = "slurm", SETTINGS, OPTIONS
    devices_hint = "SLURM allocates them: [slurm] gres, or --gres"
    about = "submit the missing fold jobs as a SLURM job array"

    def check(self):
        """Refused before anything is written: no sbatch here, or resources that cannot be asked for."""
        slurm = self.config["slurm"]
        if slurm["cpus_per_task"] <= 0 or slurm["max_parallel"] < 0:
            raise XvalError(f"[slurm] cpus_per_task must be 1 or more and max_parallel 0 (no cap) or more, got "
                            f"{slurm['cpus_per_task']} and {slurm['max_parallel']}: fix config.ini, or --cpus-per-task "
                            "and --max-parallel")
        for line in filter(None, map(str.strip, slurm["extra_sbatch"].split(";"))):
            word = line.split("=")[0].split()[0]
            option = next((name for name, (short, _) in OWN_SBATCH.items() if own_option(word, name, short)), None)
            if option:
                raise XvalError(f"extra #SBATCH line '{line}' sets {option}, which xval's scripts set themselves "
                                f"({OWN_SBATCH[option][1]}): remove it from --sbatch-line or [slurm] extra_sbatch")
        for key in ("time", "mem"):
            if not slurm[key].strip():
                raise XvalError(f"[slurm] {key} is empty: give the fold jobs' {key} (e.g. {SETTINGS[key][1]}) in "
                                f"config.ini or with --{key}; sbatch would silently use the cluster's default")
        sbatch_command()

    @classmethod
    def plan_refusal(cls, plan):
        """--status: the line validate() would refuse plan with because of the arrays SLURM holds, or None."""
        try:
            check_queued_parameters(plan, queued_fold_jobs(plan.layout))
        except XvalError as error:
            return str(error)
        return None

    def validate(self, plan):
        """What will be submitted, checked by sbatch --test-only before anything is written: the fold jobs still
        missing and not queued in an earlier submission's array, and the scripts' resources."""
        slurm, queued = self.config["slurm"], queued_fold_jobs(plan.layout)
        missing = {f"run{planned.instance}_fold{fold['fold']}": (planned, fold)
                   for planned, fold in plan.missing_jobs()}
        self.jobs = [job for name, job in missing.items() if name not in queued]
        self.queued = {name: array for name, (array, _) in queued.items() if name in missing}
        check_queued_parameters(plan, queued)
        self.folder = plan.layout.submission(time.strftime("%Y%m%d-%H%M%S"), os.getpid())
        command_line = " ".join(["python3", Path(self.routine_file).name, *self.argv])
        self.scripts = {"folds.sbatch": fold_array_script(plan, slurm, self.folder / "fold_jobs.json",
                                                          max(1, len(self.jobs)), command_line),
                        "spreadsheet.sbatch": spreadsheet_script(plan, slurm)}
        limit = max_array_size()
        if len(self.jobs) > limit:
            raise XvalError(f"{len(self.jobs)} fold jobs to submit, more than one SLURM array may hold on this cluster "
                            f"(MaxArraySize {limit}): submit fewer instances at a time (FIRST_INSTANCE "
                            "LAST_INSTANCE), one submission after the other")
        self.search_tasks = min(trials_left(plan), limit)  # a search task runs trials until none is left
        if self.search_tasks:
            self.scripts["search.sbatch"] = search_array_script(plan, slurm, self.folder / "search.json",
                                                                self.search_tasks, command_line)
        if self.jobs or self.search_tasks:
            for name, script in self.scripts.items():
                if name != "folds.sbatch" or self.jobs:
                    sbatch(["--test-only"], script)

    def run(self, plan):
        """Write the fold jobs to submit and the sbatch scripts into slurm/{time}_{pid}/, and submit them: the fold
        array, then the spreadsheet job after it. Returns 0. A refused submission leaves no submission folder."""
        if self.queued:
            arrays = sorted(set(self.queued.values()))
            print(f"xval: {len(self.queued)} fold job(s) are queued already in SLURM array(s) {', '.join(arrays)} "
                  f"({', '.join(sorted(self.queued))}): not submitted again", flush=True)
        if not self.jobs and not self.search_tasks:
            print(f"xval: nothing to submit: every selected fold job is done{' or queued' if self.queued else ''}"
                  f"{', every trial of the searches finished' if plan.searches else ''}", flush=True)
            if not self.queued:  # queued: the array's own spreadsheet job rebuilds it once they land
                rebuild_spreadsheet(plan.layout, plan.debug)
            return EXIT_DONE
        jobs, slurm, folder = self.jobs, self.config["slurm"], self.folder
        trial_folds = [plan.layout.fold(instance, fold["fold"]) for planned_search in plan.searches
                       for instance in planned_search.search.instances() for fold in plan.folds] \
            if self.search_tasks else []
        stopped = [standing_stop(plan.layout.fold(planned.instance, fold["fold"])) for planned, fold in jobs]
        stopped += [standing_stop(paths) for paths in trial_folds]
        stopped = [record for record in stopped if isinstance(record, dict)]
        if stopped:
            print(f"warning: {len(stopped)} of the fold jobs to run were stopped by SLURM in an earlier submission "
                  f"(e.g. {stopped_text(stopped[-1])}); --time is {slurm['time']}", file=sys.stderr, flush=True)
        try:
            if jobs:
                atomic_write_json(folder / "fold_jobs.json",
                                  [build_job(plan, planned, fold, slurm["cpus_per_task"]) for planned, fold in jobs])
            if self.search_tasks:
                atomic_write_json(folder / "search.json", search_plan_document(plan))
            for name, script in self.scripts.items():
                if name != "folds.sbatch" or jobs:  # a search-only submission has no fold array
                    atomic_write_text(folder / name, script)
            array = sbatch([folder / "folds.sbatch"]) if jobs else None
        except XvalError:
            shutil.rmtree(folder, ignore_errors=True)  # nothing was submitted: no submission to keep
            raise
        record = {"array_job": array, "search_job": None, "spreadsheet_job": None, "fold_jobs": [
            f"run{planned.instance}_fold{fold['fold']}" for planned, fold in jobs], "host": HOST,
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(folder / "submitted.json", record)
        if self.search_tasks:
            record["search_job"] = sbatch([folder / "search.sbatch"])
            atomic_write_json(folder / "submitted.json", record)
            print(f"xval: submitted the searches ({', '.join(str(s.search.key) for s in plan.searches)}) as SLURM "
                  f"array {record['search_job']} of {self.search_tasks} task(s), each asking for trials until none "
                  "is left", flush=True)
        arrays = ":".join(job for job in (array, record["search_job"]) if job)
        try:
            sheet = sbatch([f"--dependency=afterany:{arrays}", folder / "spreadsheet.sbatch"])
        except XvalError as error:
            raise XvalError(f"the fold jobs were submitted as SLURM array {array}, but the spreadsheet job was not: "
                            f"{error}; rebuild it after the array with python3 results_to_excel.py "
                            f"{plan.layout.root}") from None
        atomic_write_json(folder / "submitted.json", dict(record, spreadsheet_job=sheet))
        folds = f"{len(jobs)} fold job(s) as SLURM array {array} ({folder / 'folds.sbatch'}), and " if jobs else ""
        print(f"xval: submitted {folds}the spreadsheet as job {sheet} after it. Follow them with: python3 "
              f"{shlex.quote(str(Path(self.routine_file).resolve()))} --status", flush=True)
        return EXIT_DONE

    @staticmethod
    def status_lines(layout):
        """squeue's lines for the jobs this experiment folder submitted (the job ids its submitted.json records:
        another folder's experiment of the same number and dataset has jobs of the same name), where squeue is
        available."""
        squeue = shutil.which("squeue")
        if not squeue:
            return []
        ids = set()
        for path in layout.slurm.glob("*/submitted.json") if layout.slurm.exists() else []:
            record = read_if_readable(path)
            ids |= {str(value) for key, value in (record.items() if isinstance(record, dict) else ())
                    if key.endswith("_job") and value}
        listed = subprocess.run([squeue, "--me", "-h", "-o", "%i %j %T %M %R"], capture_output=True, text=True)
        lines = [line for line in listed.stdout.splitlines() if line.split()[:1] and
                 line.split()[0].split("_")[0] in ids]
        return [f"squeue: {len(lines)} job(s) of this experiment"] + [f"  {line}" for line in lines]


EXECUTOR = SlurmExecutor
