"""train.py's command line and the config (DESIGN.md section 2): --print-config, overrides on either side
of it, and a bad key or file as exit 2 with one clean `error:` line, in process and as a process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import train
from tests.helpers import run_train, tiny_config, write_config, write_config_text
from trainer.config import load_config

# ---------------------------------------------------------------------------------------------
# The command line, in process


def test_print_config_prints_yaml_that_reloads_to_the_same_config_without_training(workdir: Path, capsys):
    path = write_config(workdir / "tiny.yaml", tiny_config())

    code = train.main(["-c", str(path), "--print-config", "optimizer.lr=3e-4", "train.total_iters=12"])

    assert code == 0
    printed = capsys.readouterr().out
    expected = load_config(path, ["optimizer.lr=3e-4", "train.total_iters=12"])
    assert load_config(write_config_text(workdir / "printed.yaml", printed)) == expected
    assert "nan_policy: stop" in printed  # defaults filled
    assert not (workdir / "weights").exists()
    assert not (workdir / "experiments").exists()


def test_print_config_shows_the_base_merged(workdir: Path, capsys):
    write_config(workdir / "base.yaml", tiny_config())
    child = write_config(workdir / "child.yaml", {"base": "base.yaml", "name": "child_run"})
    assert train.main(["-c", str(child), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "child_run"
    assert printed["model"] == {"type": "SimpleCNN", "num_classes": 10, "width": 8}
    assert "base" not in printed


def test_cli_bad_key_returns_2_with_one_error_line_and_no_traceback(workdir: Path, capsys):
    path = write_config(workdir / "tiny.yaml", tiny_config())

    code = train.main(["-c", str(path), "train.totl_iters=5"])

    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-1] == "error: config key train.totl_iters is unknown; did you mean train.total_iters?"
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not (workdir / "weights").exists()


def test_cli_missing_config_file_returns_2(workdir: Path, capsys):
    assert train.main(["-c", "missing.yaml", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config file missing.yaml does not exist; check the path given to -c or base"]


def test_cli_config_path_that_is_a_directory_returns_2(workdir: Path, capsys):
    (workdir / "configs").mkdir()
    assert train.main(["-c", "configs/", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config file configs is a directory, not a YAML file; pass the path of a .yaml file"]


def test_overrides_may_stand_on_both_sides_of_print_config(workdir: Path, capsys):
    path = write_config(workdir / "tiny.yaml", tiny_config())
    try:
        code = train.main(["-c", str(path), "seed=5", "--print-config", "train.total_iters=12"])
    except SystemExit as exit_:  # argparse's "unrecognized arguments"
        pytest.fail(f"argparse exited with {exit_.code}: {capsys.readouterr().err.strip()}")
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0
    assert printed["seed"] == 5
    assert printed["train"]["total_iters"] == 12


# ---------------------------------------------------------------------------------------------
# The command line, as a process (slower)


def assert_one_clean_error_line(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line starting with 'error:', no traceback; return that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.slow
def test_train_py_typo_key_exits_2_with_one_line(workdir: Path):
    write_config(workdir / "tiny.yaml", tiny_config())
    result = run_train(workdir, "-c", "tiny.yaml", "optimizer.lr=3e-4", "train.val_intervall=5")
    line = assert_one_clean_error_line(result, "train.val_intervall", "did you mean train.val_interval?")
    assert line == "error: config key train.val_intervall is unknown; did you mean train.val_interval?"
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.yaml"]  # nothing written


@pytest.mark.slow
def test_train_py_missing_config_file_exits_2_with_one_line(workdir: Path):
    result = run_train(workdir, "-c", "configs/nope.yaml")
    assert_one_clean_error_line(result, "configs/nope.yaml", "does not exist")


@pytest.mark.slow
def test_train_py_free_form_kwarg_the_constructor_rejects_exits_2_naming_it(workdir: Path):
    write_config(workdir / "tiny.yaml", tiny_config())
    result = run_train(workdir, "-c", "tiny.yaml", "model.widht=8")
    assert_one_clean_error_line(result, "model SimpleCNN", "'widht'", "width")
