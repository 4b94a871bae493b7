"""tools/: evaluate, export and show_checkpoint on the files of a real (tiny) run.

The tools run in-process through their `main(argv)` (no interpreter start-up per call); one
test runs a tool as `python tools/x.py` from the repo root, as users do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, assert_bitwise_equal, call, load_params, load_tool, tiny_config, train_in_process, write_config

evaluate_tool, export_tool, show_tool = load_tool("evaluate"), load_tool("export"), load_tool("show_checkpoint")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding two finished tiny runs: `tiny`, and `tinyema` with train.ema."""
    directory = tmp_path_factory.mktemp("tools_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        for name, ema in (("tiny", None), ("tinyema", 0.9)):
            document = tiny_config(name=name)
            document["train"] = {**document["train"], "ema": ema}
            document["logging"] = {**document["logging"], "tensorboard": False}
            assert train_in_process(directory, document) == 0
            write_config(directory / f"{name}.yaml", document)
    return directory


@pytest.fixture
def in_run_dir(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work inside the run directory (the configs' relative paths resolve there)."""
    monkeypatch.chdir(run_dir)
    return run_dir


def assert_one_error_line(code: int, out: str, err: str, *fragments: str) -> None:
    """Exit 2, nothing on stdout, exactly one `error: ...` line on stderr containing the fragments."""
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def best_metrics(path: Path) -> dict[str, float]:
    """The best_metrics of a full .pt, without the iteration they were reached at."""
    best = torch.load(path, weights_only=True)["best_metrics"]
    return {name: value for name, value in best.items() if name != "iteration"}


# ---------------------------------------------------------------------------------------------
# evaluate


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_evaluate_prints_a_table_and_last_the_metrics_of_the_runs_best_as_json(in_run_dir: Path, suffix: str):
    code, out, err = call(evaluate_tool, "-c", "tiny.yaml", "--weights", f"weights/tiny_best{suffix}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"evaluated weights/tiny_best{suffix} on Digits (359 samples, tiny, cpu")
    assert lines[1].split() == ["metric", "value"]
    assert lines[2].startswith("accuracy ")
    assert json.loads(lines[-1]) == best_metrics(in_run_dir / "weights" / "tiny_best.pt")  # exactly, same sums


def test_evaluate_uses_the_ema_weights_of_an_ema_runs_pth(in_run_dir: Path):
    code, out, _ = call(evaluate_tool, "-c", "tinyema.yaml", "--weights", "weights/tinyema_best.pth")
    assert code == 0
    assert json.loads(out.splitlines()[-1]) == best_metrics(in_run_dir / "weights" / "tinyema_best.pt")


def test_evaluate_applies_pretrain_revise_keys_only_to_weights_that_do_not_match(in_run_dir: Path):
    # digits_finetune's rule renames the pretrained head away; its own outputs must still evaluate.
    rule = "pretrain_revise_keys=[['^head\\.5\\.', 'old_head.']]"
    code, out, err = call(evaluate_tool, "-c", "tiny.yaml", "--weights", "weights/tiny_best.pth", rule)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == best_metrics(in_run_dir / "weights" / "tiny_best.pt")
    torch.save({"net." + key: value for key, value in load_params(in_run_dir / "weights" / "tiny_best.pth").items()}, "net.pth")
    code, out, err = call(evaluate_tool, "-c", "tiny.yaml", "--weights", "net.pth", "pretrain_revise_keys=[['^net\\.', '']]")
    assert code == 0, err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["-c", "tiny.yaml", "--weights", "weights/nope.pth"], ["--weights weights/nope.pth does not exist"]),
        (["-c", "nope.yaml", "--weights", "weights/tiny_best.pth"], ["config file nope.yaml does not exist"]),
        (
            ["-c", "tiny.yaml", "--weights", "weights/tiny_best.pth", "model.width=16"],
            ["--weights weights/tiny_best.pth does not match"],
        ),
        (["-c", "tiny.yaml", "--weights", "weights/tiny_best.pth", "data.val=null"], ["config key data.val is not set"]),
        (["-c", "tiny.yaml", "--weights", "tiny.yaml"], ["--weights tiny.yaml is corrupt"]),
        (["-c", "tiny.yaml"], ["the following arguments are required: --weights"]),
    ],
    ids=["missing-weights", "missing-config", "other-architecture", "no-val", "not-weights", "no-weights-argument"],
)
def test_evaluate_bad_input_is_exit_2_with_one_line(in_run_dir: Path, argv: list[str], fragments: list[str]):
    assert_one_error_line(*call(evaluate_tool, *argv), *fragments)


# ---------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize("name", ["tiny", "tinyema"])
def test_export_pt_to_pth_is_byte_for_byte_the_trainers_pth_of_that_iteration(in_run_dir: Path, tmp_path: Path, name: str):
    # Both are torch.save({"params": state_dict}) of the same tensors in the same key order, through a
    # file object (so the archive's record names are the same): the bytes match exactly. For an EMA
    # run both hold the EMA weights.
    out = tmp_path / "exported.pth"
    code, stdout, err = call(export_tool, f"weights/{name}_iter_20.pt", "-o", str(out))
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: 8 tensors")
    assert out.read_bytes() == (in_run_dir / "weights" / f"{name}_iter_20.pth").read_bytes()


def test_export_never_overwrites_unless_forced(in_run_dir: Path, tmp_path: Path):
    source = tmp_path / "copy.pt"
    source.write_bytes((in_run_dir / "weights" / "tiny_iter_10.pt").read_bytes())
    target = tmp_path / "copy.pth"  # the default output: the same path with the new suffix
    target.write_bytes(b"precious")
    assert_one_error_line(*call(export_tool, str(source)), f"{target} exists; pass --force")
    assert target.read_bytes() == b"precious"
    assert call(export_tool, str(source), "--force")[0] == 0
    assert target.read_bytes() == (in_run_dir / "weights" / "tiny_iter_10.pth").read_bytes()
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []


def test_export_to_safetensors_round_trips_every_tensor(in_run_dir: Path, tmp_path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    source = tmp_path / "tiny_best.pt"
    source.write_bytes((in_run_dir / "weights" / "tiny_best.pt").read_bytes())
    code, _, err = call(export_tool, str(source), "--format", "safetensors")
    assert code == 0, err
    exported = tmp_path / "tiny_best.safetensors"
    assert_bitwise_equal(load_file(exported), load_params(in_run_dir / "weights" / "tiny_best.pth"))
    with safe_open(exported, framework="pt") as file:
        assert file.metadata() == {"format": "pt", "source": "tiny_best.pt"}


def test_export_from_a_pth_or_a_bare_state_dict(in_run_dir: Path, tmp_path: Path):
    params = load_params(in_run_dir / "weights" / "tiny_best.pth")
    torch.save({"module." + key: value for key, value in params.items()}, tmp_path / "ddp.pth")
    assert call(export_tool, str(tmp_path / "ddp.pth"), "-o", str(tmp_path / "clean.pth"))[0] == 0
    assert_bitwise_equal(load_params(tmp_path / "clean.pth"), params)  # DDP's prefix is gone


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["weights/nope.pt"], ["checkpoint weights/nope.pt does not exist"]),
        (["weights/tiny_best.pth"], ["weights/tiny_best.pth is the checkpoint itself"]),
        (["weights/tiny_best.pt", "-o", "no/such/dir/x.pth"], ["the folder no/such/dir does not exist"]),
        (["tiny.yaml", "-o", "x.pth"], ["checkpoint tiny.yaml is corrupt"]),
        (["weights/tiny_best.pt", "--format", "onnx"], ["argument --format: invalid choice: 'onnx'"]),
        (["weights"], ["checkpoint weights is a directory, not a checkpoint file"]),
    ],
    ids=["missing", "onto-itself", "no-folder", "not-a-checkpoint", "bad-format", "a-directory"],
)
def test_export_bad_input_is_exit_2_with_one_line(in_run_dir: Path, argv: list[str], fragments: list[str]):
    assert_one_error_line(*call(export_tool, *argv), *fragments)


def test_export_into_a_full_disk_names_the_output_not_its_temporary_file(in_run_dir: Path, tmp_path: Path, monkeypatch):
    import errno

    import utils.io

    def full_disk(path, write):
        temporary = Path(path).with_name(f".{Path(path).name}.4242.tmp")
        raise OSError(errno.ENOSPC, "No space left on device", str(temporary))

    monkeypatch.setattr(utils.io, "atomic_write", full_disk)
    target = tmp_path / "out.pth"
    code, out, err = call(export_tool, "weights/tiny_best.pt", "-o", str(target))
    assert code == 1 and out == ""
    assert err == f"error: could not write {target} (No space left on device)\n"
    assert not target.exists()


def test_export_of_a_file_without_weights_says_what_it_holds(tmp_path: Path):
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "other.pt")
    code, out, err = call(export_tool, str(tmp_path / "other.pt"))
    assert_one_error_line(code, out, err, "holds no weights", "its keys: ['epoch', 'note']")


# ---------------------------------------------------------------------------------------------
# show_checkpoint


def test_show_checkpoint_of_a_pt_prints_iteration_epoch_best_parameters_and_config(in_run_dir: Path):
    checkpoint = torch.load(in_run_dir / "weights" / "tiny_iter_20.pt", weights_only=True)
    parameters = sum(tensor.numel() for tensor in checkpoint["model"].values())
    best = checkpoint["best_metrics"]
    code, out, _ = call(show_tool, "weights/tiny_iter_20.pt")
    assert code == 0
    lines = out.splitlines()
    assert "format:         full checkpoint (.pt), format_version 1" in lines
    assert "iteration:      20" in lines
    assert f"epoch:          {checkpoint['epoch']}" in lines
    assert f"best:           accuracy {best['accuracy']:.6g} @ iter {best['iteration']}" in lines
    assert f"parameters:     {parameters:,} in 8 tensors, " in out
    assert lines[lines.index("config:") + 1] == "  name: tiny"


def test_show_checkpoint_of_a_pth_and_of_a_safetensors_file(in_run_dir: Path, tmp_path: Path):
    params = load_params(in_run_dir / "weights" / "tiny_best.pth")
    count = f"{sum(tensor.numel() for tensor in params.values()):,} in 8 tensors"
    code, out, _ = call(show_tool, "weights/tiny_best.pth")
    assert code == 0
    assert 'format:         weight-only (.pth): {"params": state_dict}' in out
    assert count in out and "top-level keys: params" in out
    call(export_tool, "weights/tiny_best.pt", "--format", "safetensors", "-o", str(tmp_path / "w.safetensors"))
    code, out, _ = call(show_tool, str(tmp_path / "w.safetensors"))
    assert code == 0
    assert "format:     safetensors" in out and count in out


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["weights/nope.pt"], ["checkpoint weights/nope.pt does not exist"]),
        (["tiny.yaml"], ["checkpoint tiny.yaml is corrupt"]),
        ([], ["the following arguments are required: path"]),
    ],
    ids=["missing", "not-a-checkpoint", "no-argument"],
)
def test_show_checkpoint_bad_input_is_exit_2_with_one_line(in_run_dir: Path, argv: list[str], fragments: list[str]):
    assert_one_error_line(*call(show_tool, *argv), *fragments)


def test_tools_run_as_scripts_from_the_repo_root(run_dir: Path):
    result = subprocess.run(
        [sys.executable, "tools/show_checkpoint.py", str(run_dir / "weights" / "tiny_best.pth")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "weight-only (.pth)" in result.stdout
