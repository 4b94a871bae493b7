"""Run a sweep: every trial an ordinary `train.py` process, its outcome told to the study.

Trial k of sweep S is `[launcher...] train.py -c BASE OVERRIDES name=S_t<k> PARAMS resume_path=null`
with the environment trial_hook.py reads, run from the sweep's working directory, its console
output appended to `<sweep dir>/trials/S_t<k>.out`. Its exit code decides the outcome: 0
COMPLETE (the value is the best objective its validations reached), EXIT_PRUNED (or the
`kiln_pruned_at` mark, for launchers that hide the code) PRUNED, anything else FAIL with the
run's error line. A crash of one trial never reaches the sweep: only a process ended.

One sweep process per study at a time (a lock in the sweep directory). The kernel drops the lock
however the process ends, so a trial still RUNNING in storage when the next sweep process holds
the lock was left by a dead one: it is continued with the same number and parameters, its run
resuming from its newest checkpoint (resume_path=auto).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from trainer.errors import InputError
from trainer.guards.signals import StopSignals
from trainer.sweep.report import write_report
from trainer.sweep.space import override
from trainer.sweep.spec import SweepSpec
from trainer.sweep.study import (
    ATTR_ERROR,
    ATTR_PRUNED_AT,
    ATTR_SECONDS,
    best_value,
    import_optuna,
    last_iteration,
    load_existing_study,
    open_study,
    rdb_storage,
    storage_url,
)
from trainer.sweep.trial_hook import EXIT_PRUNED, SWEEP_STORAGE_ENV, SWEEP_STUDY_ENV, SWEEP_TRIAL_ENV
from utils import console

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
POLL_SECONDS = 0.2  # how often the sweep looks at its running trials


class SweepLog:
    """Timestamped lines to the console and `<sweep dir>/sweep.log` (appended across reruns)."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole sweep

    def info(self, message: str) -> None:
        """One timestamped line to sweep.log and the console."""
        self.plain(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S} | {message}")

    def plain(self, line: str) -> None:
        """One line as it is (the results table) to sweep.log (first: it keeps every line) and the console."""
        self._file.write(line + "\n")
        self._file.flush()
        console.write(sys.stdout, line + "\n")

    def close(self) -> None:
        """Close sweep.log."""
        self._file.close()


class SweepLock:
    """flock on `<sweep dir>/.sweep.lock`: one sweep process per study; the kernel releases it at exit."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path, self.name = directory / ".sweep.lock", name
        self._file: TextIO | None = None

    def __enter__(self) -> SweepLock:
        self._file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole sweep
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise InputError(
                f"sweep {self.name} is already running ({holder} holds {self.path}); wait for it to finish, or stop it "
                "and run the same command again to continue it"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on host {socket.gethostname()} since {datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n")
        self._file.flush()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class TrialProcess:
    """One running trial: its Optuna trial, the train.py process, and where its output goes."""

    trial: Any  # optuna.trial.Trial
    name: str
    process: subprocess.Popen
    output: Path
    output_start: int  # the output file's size at launch: this launch's lines come after it
    started: float


class Runner:
    """Keeps up to `jobs` trial processes running until the study holds `spec.trials` finished trials."""

    def __init__(self, spec: SweepSpec, study: Any, storage: Any, jobs: int, log: SweepLog) -> None:
        self.spec, self.study, self.storage, self.jobs, self.log = spec, study, storage, jobs, log
        self.optuna = import_optuna()
        self.url = storage_url(spec.directory)
        self.running: dict[int, TrialProcess] = {}

    def run(self) -> int | None:
        """Run the sweep's trials; None when done, 128+signal when a signal stopped it (trials stay resumable)."""
        queue = self._interrupted_trials()
        with StopSignals() as signals:
            forwarded = False
            while True:
                while signals.received is None and len(self.running) < self.jobs and (queue or self._room()):
                    trial, resumed = (queue.pop(0), True) if queue else (self.study.ask(), False)
                    self._launch(trial, resumed)
                if not self.running:
                    break
                if signals.received is not None and not forwarded:
                    self._stop_all()
                    forwarded = True
                self._collect(interrupted=signals.received is not None)
                time.sleep(POLL_SECONDS)
        if signals.received is not None:
            self.log.info(f"stopped by signal {signals.received}; run the same command again to continue the sweep")
            return 128 + signals.received
        return None

    def _room(self) -> bool:
        """Whether the study has fewer trials (any state) than the sweep asks for."""
        return len(self.study.get_trials(deepcopy=False)) < self.spec.trials

    def _interrupted_trials(self) -> list[Any]:
        """Trials a dead sweep process left RUNNING (this one holds the lock): continued, not repeated."""
        study_id = self.storage.get_study_id_from_name(self.spec.name)
        trials = []
        for frozen in self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            trials.append(self.optuna.trial.Trial(self.study, trial_id))
        return trials

    def _launch(self, trial: Any, resumed: bool) -> None:
        """Draw (or, for a continued trial, read back) the parameters and start the trial's process."""
        params = {dimension.key: dimension.suggest(trial) for dimension in self.spec.space}
        name = self.spec.trial_name(trial.number)
        if resumed:
            frozen = self._frozen(trial.number)
            if frozen.user_attrs.get(ATTR_PRUNED_AT) is not None:  # pruned, but the sweep died before telling it
                self._tell(trial, self.optuna.trial.TrialState.PRUNED, frozen, frozen.user_attrs.get(ATTR_SECONDS, 0.0))
                return
        command = self._command(name, params, resumed)
        output = self.spec.directory / "trials" / f"{name}.out"
        output.parent.mkdir(exist_ok=True)
        self.log.info(f"trial {trial.number} ({name}) {'resumed' if resumed else 'started'}: {describe_params(params)}")
        with open(output, "a", encoding="utf-8") as file:
            file.write(f"=== {datetime.datetime.now():%Y-%m-%d %H:%M:%S} {' '.join(command)}\n")
            start = file.tell()
            try:
                process = subprocess.Popen(
                    command, stdout=file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._environment(trial.number)
                )
            except OSError as error:  # the launcher vanished or cannot run: this trial fails, the sweep goes on
                failed = self.optuna.trial.TrialState.FAIL
                self._tell(trial, failed, self._frozen(trial.number), 0.0, f"cannot start {command[0]}: {error}")
                return
        self.running[trial.number] = TrialProcess(trial, name, process, output, start, time.monotonic())

    def _command(self, name: str, params: dict[str, Any], resumed: bool) -> list[str]:
        """The trial's train.py command line: base, the sweep's overrides, its name, its parameters."""
        launcher = list(self.spec.launcher) or ["python"]
        if launcher[0] == "python":  # the sweep's own interpreter (a venv's, even when it is not on PATH)
            launcher[0] = sys.executable
        return [
            *launcher,
            str(TRAIN_PY),
            "-c",
            str(self.spec.config_path),
            *self.spec.overrides,
            f"name={name}",
            *(override(key, value) for key, value in params.items()),
            # A continued trial resumes from its newest checkpoint; a new one starts fresh (and so
            # never resumes a stale run of the same name left by a deleted study).
            f"resume_path={'auto' if resumed else 'null'}",
        ]

    def _environment(self, number: int) -> dict[str, str]:
        """The trial's environment: the study to report to, unbuffered output, and a share of the cores."""
        env = {
            **os.environ,
            SWEEP_STORAGE_ENV: self.url,
            SWEEP_STUDY_ENV: self.spec.name,
            SWEEP_TRIAL_ENV: str(number),
            "PYTHONUNBUFFERED": "1",
        }
        if self.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            # torch's default of a thread per core in each of N trials oversubscribes the cores.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        return env

    def _stop_all(self) -> None:
        """Ask every running trial to stop: each saves a checkpoint at its next iteration (SIGTERM)."""
        for run in self.running.values():
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGTERM)

    def _collect(self, interrupted: bool) -> None:
        """Record every trial whose process has ended."""
        for number, run in list(self.running.items()):
            code = run.process.poll()
            if code is None:
                continue
            del self.running[number]
            self._record(run, code, interrupted)

    def _record(self, run: TrialProcess, code: int, interrupted: bool) -> None:
        """Tell the study how the trial's process ended (a run a signal stopped stays RUNNING, to resume)."""
        frozen = self._frozen(run.trial.number)
        seconds = frozen.user_attrs.get(ATTR_SECONDS, 0.0) + time.monotonic() - run.started
        pruned = code == EXIT_PRUNED or frozen.user_attrs.get(ATTR_PRUNED_AT) is not None
        states = self.optuna.trial.TrialState
        if interrupted and code != 0 and not pruned:
            run.trial.set_user_attr(ATTR_SECONDS, seconds)
            self.log.info(f"trial {run.trial.number} ({run.name}) interrupted (exit {code}); it resumes from its checkpoint")
        elif pruned:
            self._tell(run.trial, states.PRUNED, frozen, seconds)
        elif code == 0 and best_value(frozen, self.spec.mode) is not None:
            self._tell(run.trial, states.COMPLETE, frozen, seconds)
        else:
            error = _error_line(run.output, run.output_start) if code else f"no {self.spec.metric} was reported"
            self._tell(run.trial, states.FAIL, frozen, seconds, error=f"exit {code}: {error}")

    def _tell(self, trial: Any, state: Any, frozen: Any, seconds: float, error: str | None = None) -> None:
        """Finish the trial in the study (COMPLETE with its best value) and log one line about it."""
        trial.set_user_attr(ATTR_SECONDS, seconds)
        if error is not None:
            trial.set_user_attr(ATTR_ERROR, error)
        value = best_value(frozen, self.spec.mode)
        self.study.tell(trial.number, value if state == self.optuna.trial.TrialState.COMPLETE else None, state=state)
        what = f"trial {trial.number} ({self.spec.trial_name(trial.number)}) {state.name}"
        if error is not None:
            self.log.info(f"{what} after {seconds:.1f} s: {error}")
            return
        reached = f"{self.spec.metric} {value:.4f}" if value is not None else f"no {self.spec.metric}"
        self.log.info(f"{what} at iteration {last_iteration(frozen)}: best {reached}, {seconds:.1f} s")

    def _frozen(self, number: int) -> Any:
        """The trial's latest record in storage (what its process reported)."""
        return next(trial for trial in self.study.get_trials(deepcopy=False) if trial.number == number)


def _error_line(output: Path, start: int) -> str:
    """The last `error: ...` line a trial's launch printed, else its last line (a traceback's end)."""
    try:
        with open(output, encoding="utf-8", errors="replace") as file:
            file.seek(start)
            lines = [line.strip() for line in file if line.strip()]
    except OSError as error:
        return f"its output {output} cannot be read ({error.strerror})"
    errors = [line for line in lines if line.startswith("error: ") or "] error: " in line]  # torchrun prefixes [rankN]
    line = (errors or lines or ["no output"])[-1]
    return line.split("error: ", 1)[1] if "error: " in line else line


def run_sweep(spec: SweepSpec, jobs: int) -> int:
    """Run (or continue) the sweep with `jobs` trials at once, then report; the exit code."""
    import_optuna()
    spec.directory.mkdir(parents=True, exist_ok=True)
    with SweepLock(spec.directory, spec.name):
        log = SweepLog(spec.directory / "sweep.log")
        try:
            storage = rdb_storage(storage_url(spec.directory), create=True)
            study = open_study(spec, storage)
            base = os.path.normpath(spec.config_path)  # configs/digits_cnn.yaml, not configs/sweeps/../digits_cnn.yaml
            log.info(f"sweep {spec.name}: {spec.trials} trials of {base}, {jobs} at a time, in {spec.directory}")
            stopped = Runner(spec, study, storage, jobs, log).run()
            best = write_report(spec, study, log.plain)
        finally:
            log.close()
    if stopped is not None:
        return stopped
    if best is None:
        log_path = spec.directory / "sweep.log"
        console.write(sys.stderr, f"error: no trial of sweep {spec.name} completed; see the FAIL lines in {log_path}\n")
        return 1
    return 0


def report_sweep(spec: SweepSpec) -> int:
    """--report: print the trials table and write trials.csv, best_config.yaml and the HParams; 0."""
    write_report(spec, load_existing_study(spec), lambda line: console.write(sys.stdout, line + "\n"))
    return 0


def describe_params(params: dict[str, Any]) -> str:
    """'optimizer.lr=0.001, train.ema=null' (JSON values, as the overrides give them)."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in params.items())
