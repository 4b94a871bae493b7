"""tools/sweep.py (DESIGN.md section 6): Optuna sweeps whose trials are ordinary Kiln runs.

- A bad sweep file is one exact `error:` line and exit 2, with nothing written.
- One real sweep of three tiny trials (a grid over the learning rate, in a fixed order): the
  first fails (a negative lr), the second completes, the third is pruned at its first validation.
- One real sweep killed mid-trial (SIGKILL to its process group) and run again: no finished trial
  runs again, the killed one resumes from its checkpoint, the study ends with exactly `trials`.
- best_config.yaml trains the best trial again, bit for bit.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.helpers import REPO, assert_bitwise_equal, load_params, load_tool, tiny_config, write_config
from trainer import run
from trainer.config import load_config

pytestmark = pytest.mark.slow

SWEEP_PY = REPO / "tools" / "sweep.py"
CSV_HEADER = "number,state,value,optimizer.lr,iteration,seconds"


sweep_tool = load_tool("sweep")


def call(*argv: str) -> tuple[int, str, str]:
    """tools/sweep.py's main(argv) in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        code = sweep_tool.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def sweep_process(cwd: Path, *args: str, **popen) -> subprocess.Popen:
    """`python tools/sweep.py ARGS` in `cwd`, one thread per process (tiny models, a shared machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(SWEEP_PY), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        **popen,
    )


def run_sweep(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a sweep to its end; its CompletedProcess."""
    process = sweep_process(cwd, *args)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def base_config(total_iters: int = 30, interval: int = 10) -> dict:
    """The tiny digits config, validating and saving every `interval` iterations, no TensorBoard (speed)."""
    return tiny_config(
        scheduler={"type": "CosineAnnealingLR", "T_max": total_iters},
        train={"total_iters": total_iters, "val_interval": interval},
        checkpoint={"interval": interval},
        logging={"interval": interval, "progress": False, "tensorboard": False},
    )


def write_sweep(directory: Path, **changes) -> Path:
    """base.yaml (the tiny config) and sweep.yaml (name sw, a random search over lr, changes applied)."""
    write_config(directory / "base.yaml", base_config())
    document = {
        "name": "sw",
        "config": "base.yaml",
        "trials": 2,
        "sampler": "random",
        "pruner": "none",
        "space": {"optimizer.lr": {"log_float": [1.0e-3, 1.0e-2]}},
        **changes,
    }
    return write_config(directory / "sweep.yaml", document)


def trials_of(directory: Path, name: str = "sw") -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read from its storage as any Optuna user would."""
    url = f"sqlite:///{directory / 'experiments' / name / 'study.db'}"
    return sorted(optuna.load_study(study_name=name, storage=url).trials, key=lambda trial: trial.number)


def assert_hparams(run_dir: Path, hparams: dict, value: float) -> None:
    """The TensorBoard HParams entry in `run_dir` holds `hparams` and the objective `value` (float32)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    found, scalars = {}, {}
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in LegacyEventFileLoader(str(path)).Load():
            for item in event.summary.value:
                if item.tag == "_hparams_/session_start_info":
                    info = HParamsPluginData.FromString(item.metadata.plugin_data.content).session_start_info
                    found = {key: getattr(v, v.WhichOneof("kind")) for key, v in info.hparams.items()}
                elif item.WhichOneof("value") == "simple_value":
                    scalars[item.tag] = item.simple_value
    assert found == hparams
    assert scalars["sweep/accuracy"] == pytest.approx(value, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Validated at the door


DOOR_CASES = {
    "unknown key, did you mean": (
        {"space": {"optimizer.lrr": {"log_float": [1.0e-4, 1.0e-2]}}},
        "sweep file sweep.yaml: space key optimizer.lrr is unknown in the base config base.yaml; did you mean optimizer.lr?",
    ),
    "unknown constructor argument": (
        {"space": {"model.widht": {"int": [8, 32, 8]}}},
        "sweep file sweep.yaml: space key model.widht is unknown in the base config base.yaml; did you mean model.width?",
    ),
    "unknown section": (
        {"space": {"trian.total_iters": {"int": [10, 30]}}},
        "sweep file sweep.yaml: space key trian.total_iters is unknown in the base config base.yaml; did you mean train?",
    ),
    "range lo > hi": (
        {"space": {"optimizer.lr": {"log_float": [1.0e-2, 1.0e-4]}}},
        "sweep file sweep.yaml: space optimizer.lr: log_float range [0.01, 0.0001] has lo > hi; write [lo, hi] with lo <= hi",
    ),
    "log range through 0": (
        {"space": {"optimizer.lr": {"log_float": [0, 1.0e-2]}}},
        "sweep file sweep.yaml: space optimizer.lr: log_float needs lo > 0 (a log scale), got 0; "
        "use float for a range that reaches 0",
    ),
    "int step": (
        {"space": {"model.width": {"int": [8, 30, 8]}}},
        "sweep file sweep.yaml: space model.width: int step 8 does not divide the range [8, 30] into whole steps; "
        "use a step >= 1 that divides hi - lo",
    ),
    "unknown distribution": (
        {"space": {"optimizer.lr": {"logfloat": [1.0e-4, 1.0e-2]}}},
        "sweep file sweep.yaml: space optimizer.lr: unknown distribution 'logfloat'; did you mean log_float? "
        "(known: log_float, float, int, choice)",
    ),
    "value the config refuses": (
        {"space": {"train.ema": {"choice": [None, 1.5]}}},
        "sweep file sweep.yaml: space train.ema: the value 1.5 does not fit the base config (config key train.ema: "
        "got 1.5 (number), expected a decay in (0, 1) such as 0.999)",
    ),
    "bad sampler": (
        {"sampler": "tpee"},
        "sweep file sweep.yaml: key sampler: got 'tpee', expected one of tpe, random, grid (did you mean tpe?), "
        "or {type: NAME, ...options}",
    ),
    "bad pruner": (
        {"pruner": "medain"},
        "sweep file sweep.yaml: key pruner: got 'medain', expected one of median, hyperband, none (did you mean median?), "
        "or {type: NAME, ...options}",
    ),
    "bad pruner option": (
        {"pruner": {"type": "median", "n_warmup": 3}},
        "sweep file sweep.yaml: key pruner: MedianPruner refused its options (MedianPruner.__init__() got an unexpected "
        "keyword argument 'n_warmup'); see Optuna's documentation of it",
    ),
    "grid of a float": (
        {"sampler": "grid"},
        "sweep file sweep.yaml: space optimizer.lr: the grid sampler needs choice or int distributions, not log_float; "
        "list the values with choice: [...] or use sampler tpe or random",
    ),
    "launcher not on PATH": (
        {"launcher": ["torchrunx", "--standalone"]},
        "sweep file sweep.yaml: key launcher: torchrunx is not a program on PATH; give its path, or start with python "
        "(the sweep's own interpreter), e.g. [python, -m, torch.distributed.run, --nproc_per_node=2]",
    ),
    "unknown sweep key": (
        {"trails": 3},
        "sweep file sweep.yaml: key trails is unknown; did you mean trials?",
    ),
    "objective not a metric": (
        {"objective": {"metric": "acuracy"}},
        "sweep file sweep.yaml: key objective.metric: 'acuracy' is not a metric of the base config; did you mean accuracy?",
    ),
}


@pytest.mark.parametrize("changes, line", DOOR_CASES.values(), ids=DOOR_CASES.keys())
def test_a_bad_sweep_file_is_one_line_and_exit_2(workdir: Path, changes: dict, line: str) -> None:
    write_sweep(workdir, **changes)
    before = sorted(path.name for path in workdir.iterdir())
    code, out, err = call("-c", "sweep.yaml")
    assert (code, out, err) == (2, "", f"error: {line}\n")
    assert sorted(path.name for path in workdir.iterdir()) == before  # nothing created: no study, no run


def test_a_missing_optuna_names_pip_install(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sweep(workdir)
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    code, out, err = call("-c", "sweep.yaml")
    assert (code, out) == (2, "")
    assert err.startswith("error: sweeps need optuna, which is not installed: pip install optuna ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# One sweep: a failing, a complete and a pruned trial

# GridSampler (seed 5, Optuna 5.0) visits these in the order fail, complete, prune.
LRS = [-1.0, 3.0e-3, 1.0e-7]


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished sweep of three tiny trials (30 iterations, validated every 10) and its output."""
    directory = tmp_path_factory.mktemp("grid_sweep")
    write_sweep(
        directory,
        trials=3,
        sampler={"type": "grid", "seed": 5},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        space={"optimizer.lr": {"choice": LRS}},
    )
    result = run_sweep(directory, "-c", "sweep.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    trials = trials_of(directory)
    assert [trial.params["optimizer.lr"] for trial in trials] == LRS, "the grid's order changed: pick another seed"
    return directory, result


def test_a_failing_trial_is_fail_with_its_error_line_and_the_sweep_goes_on(grid_sweep) -> None:
    directory, result = grid_sweep
    failed, complete, pruned = trials_of(directory)
    error = "exit 2: config key optimizer: optimizer AdamW: Invalid learning rate: -1.0; fix its arguments in the config"
    assert failed.state.name == "FAIL" and failed.user_attrs["kiln_error"] == error
    assert "trial 0 (sw_t0) FAIL after" in result.stdout and error in result.stdout
    assert complete.state.name == "COMPLETE" and pruned.state.name == "PRUNED"  # the sweep went on to trials 1 and 2
    log = (directory / "experiments" / "sw_t1" / "train.log").read_text()
    assert "done: sw_t1 at iteration 30" in log
    assert complete.value == max(complete.intermediate_values.values())  # the best validation, as Kiln's best
    assert sorted(complete.intermediate_values) == [10, 20, 30]


def test_a_pruned_trial_stops_at_that_validation_and_keeps_its_files(grid_sweep) -> None:
    directory, _ = grid_sweep
    pruned = trials_of(directory)[2]
    assert pruned.state.name == "PRUNED" and pruned.user_attrs["kiln_pruned_at"] == 10
    assert list(pruned.intermediate_values) == [10]
    accuracy = pruned.intermediate_values[10]
    lines = (directory / "experiments" / "sw_t2" / "train.log").read_text().splitlines()
    assert lines[-2].endswith(f"validation @ iter 10: accuracy {accuracy:.4f} | best accuracy {accuracy:.4f} @ iter 10")
    assert lines[-1].endswith(
        f"stopped at iteration 10: pruned by the sweep's median pruner (accuracy {accuracy:.4f}); checkpoint saved"
    )
    weights = sorted(path.name for path in (directory / "weights").glob("sw_t2_*"))
    assert weights == ["sw_t2_best.pt", "sw_t2_best.pth", "sw_t2_iter_10.pt", "sw_t2_iter_10.pth"]
    rows = (directory / "experiments" / "sw" / "trials.csv").read_text().splitlines()
    assert rows[3].split(",")[:5] == ["2", "PRUNED", repr(accuracy), "1e-07", "10"]


def test_report_prints_the_table_and_writes_the_results(grid_sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, _ = grid_sweep
    results = directory / "experiments" / "sw"
    (results / "trials.csv").unlink()
    monkeypatch.chdir(directory)
    code, out, err = call("-c", "sweep.yaml", "--report", "logging.tensorboard=true")  # the trials ran without
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["number", "state", "value", "optimizer.lr", "iteration", "seconds"]
    assert [line.split()[:2] for line in lines[1:4]] == [["0", "FAIL"], ["1", "COMPLETE"], ["2", "PRUNED"]]
    assert lines[2].split()[2:5] == ["0.3565", "0.003", "30"]
    assert "sweep sw: 3 of 3 trials (1 COMPLETE, 1 PRUNED, 1 FAIL)" in out
    assert "best: trial 1 (sw_t1), accuracy 0.3565; train it again: python train.py -c experiments/sw/best_config.yaml" in out
    rows = (results / "trials.csv").read_text().splitlines()
    assert rows[0] == CSV_HEADER and len(rows) == 4
    assert [row.split(",")[:2] for row in rows[1:]] == [["0", "FAIL"], ["1", "COMPLETE"], ["2", "PRUNED"]]
    assert rows[1].split(",")[2:5] == ["", "-1.0", ""]  # a failed trial has no value and no iteration
    assert rows[2].split(",")[2:5] == ["0.3565459610027855", "0.003", "30"]
    assert all(float(row.split(",")[5]) > 0 for row in rows[1:])  # seconds
    # The HParams of the finished trials with a value, one TensorBoard run each, with the trial's parameters.
    assert sorted(path.name for path in (results / "hparams").iterdir() if path.is_dir()) == ["sw_t1", "sw_t2"]
    assert_hparams(results / "hparams" / "sw_t1", {"optimizer.lr": 3.0e-3, "state": "COMPLETE"}, 0.3565459610027855)


def test_best_config_trains_the_best_trial_again_bitwise(grid_sweep, tmp_path: Path, monkeypatch, one_thread) -> None:
    directory, _ = grid_sweep
    best_config = directory / "experiments" / "sw" / "best_config.yaml"
    document = yaml.safe_load(best_config.read_text())
    assert (document["name"], document["resume_path"], document["optimizer"]["lr"]) == ("sw_best", None, 3.0e-3)
    trial_files = {path: path.read_bytes() for path in (directory / "weights").glob("sw_t1_*")}
    monkeypatch.chdir(tmp_path)  # its own logging and checkpoint directories
    assert run(load_config(best_config)) == 0
    rerun, trial = tmp_path / "weights" / "sw_best_iter_30.pth", directory / "weights" / "sw_t1_iter_30.pth"
    assert_bitwise_equal(load_params(rerun), load_params(trial))
    assert {path: path.read_bytes() for path in (directory / "weights").glob("sw_t1_*")} == trial_files


def test_a_rerun_with_another_space_is_refused(grid_sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, _ = grid_sweep
    monkeypatch.chdir(directory)
    document = yaml.safe_load((directory / "sweep.yaml").read_text())
    document["space"], document["trials"] = {"optimizer.lr": {"choice": [3.0e-3, 1.0e-3]}}, 2
    write_config(directory / "other.yaml", document)
    code, _, err = call("-c", "other.yaml")
    assert code == 2
    assert err == (
        "error: sweep file other.yaml: the study sw in experiments/sw/study.db was started with another objective or space "
        "(space.optimizer.lr.choice: [-1.0, 0.003, 1e-07] -> [0.003, 0.001]); restore them, or give the sweep another name "
        "to start a new study\n"
    )


# ---------------------------------------------------------------------------------------------
# A killed sweep continues


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until `path` exists (the sweep must still be running meanwhile)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def killed_and_continued(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, subprocess.CompletedProcess]:
    """A sweep of 3 trials of 200 iterations, SIGKILLed (its whole process group) once trial 1 saved
    iteration 20, then run again with --jobs 2; (directory, the trials after the kill, the rerun)."""
    directory = tmp_path_factory.mktemp("killed_sweep")
    write_sweep(directory, trials=3)
    write_config(directory / "base.yaml", base_config(total_iters=200, interval=20))
    first = sweep_process(directory, "-c", "sweep.yaml", start_new_session=True)  # its own process group
    try:
        wait_for(directory / "weights" / "sw_t1_iter_20.pt", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the sweep and its trial, at once
        first.communicate()
    after_kill = trials_of(directory)
    rerun = run_sweep(directory, "-c", "sweep.yaml", "--jobs", "2")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    return directory, after_kill, rerun


def test_a_killed_sweep_continues_without_repeating_a_finished_trial(killed_and_continued) -> None:
    directory, after_kill, rerun = killed_and_continued
    assert [(trial.number, trial.state.name) for trial in after_kill] == [(0, "COMPLETE"), (1, "RUNNING")]
    trials = trials_of(directory)
    assert [(trial.number, trial.state.name) for trial in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert trials[0].datetime_complete == after_kill[0].datetime_complete  # told once, never run again
    log = (directory / "experiments" / "sw_t0" / "train.log").read_text()
    assert log.count("training sw_t0 on cpu") == 1
    assert (directory / "experiments" / "sw" / "trials" / "sw_t0.out").read_text().count("=== ") == 1
    assert trials[1].params == after_kill[1].params  # the same trial, continued
    assert trials[2].params != trials[0].params  # a continued sweep draws anew (its sampler is not replayed)
    assert "trial 1 (sw_t1) resumed: optimizer.lr=" in rerun.stdout


def test_the_interrupted_trial_resumes_from_its_checkpoint(killed_and_continued) -> None:
    directory, _, rerun = killed_and_continued
    log = (directory / "experiments" / "sw_t1" / "train.log").read_text()
    starts = [line.split(" | ", 1)[1] for line in log.splitlines() if " | training sw_t1" in line or " | resumed from" in line]
    assert starts[0] == "training sw_t1 on cpu: iterations 0 -> 200, 9,802 parameters"
    resumed_at = int(starts[1].split(" at iteration ")[1].split()[0])
    assert resumed_at >= 20
    assert re.fullmatch(rf"resumed from weights/sw_t1_iter_{resumed_at}\.pt at iteration {resumed_at} \(epoch \d+\)", starts[1])
    assert starts[2] == f"training sw_t1 on cpu: iterations {resumed_at} -> 200, 9,802 parameters" and len(starts) == 3
    assert "done: sw_t1 at iteration 200" in log
    output = (directory / "experiments" / "sw" / "trials" / "sw_t1.out").read_text()
    launches = [line for line in output.splitlines() if line.startswith("=== ")]
    assert len(launches) == 2 and launches[0].endswith("resume_path=null") and launches[1].endswith("resume_path=auto")


def test_jobs_2_runs_two_trials_at_once(killed_and_continued) -> None:
    _, _, rerun = killed_and_continued
    lines = [line.split(" | ", 1)[1] for line in rerun.stdout.splitlines() if " | trial " in line]
    # Both started before either ended.
    assert lines[0].startswith("trial 1 (sw_t1) resumed") and lines[1].startswith("trial 2 (sw_t2) started")
