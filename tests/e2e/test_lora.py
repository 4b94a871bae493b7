"""LoRA end to end, against the real transformers and peft: train.py trains adapters on a tiny
published model (`model: {type: hf}` + `pretrain_path: DIR` + `train.lora`), its checkpoints
hold the adapters and the identity of the base only, it resumes bitwise (mid-epoch, after a
SIGKILL with resume_path auto, from sharded checkpoints), and tools/export.py writes a PEFT
adapter directory and a merged model whose logits are Kiln's."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    assert_bitwise_equal,
    call,
    error_of,
    load_params,
    load_tool,
    run_train,
    tiny_config,
    torchrun,
    write_config,
)
from tests.hf_models import save_tiny

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.slow

EXPORT_TOOL = load_tool("export")
VOCAB, SEQ, ROWS = 96, 12, 8  # 8 rows in batches of 2: 4 steps an epoch, so iteration 3 is mid-epoch
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "qwen2": ["q_proj", "k_proj", "o_proj"], "gpt2": ["c_attn", "c_fc"]}

# A dataset plugin (lora_data.py beside the config): ROWS fixed rows of random token ids.
DATA_PLUGIN = """
import torch
from torch.utils.data import Dataset


class RandomTokens(Dataset):
    def __init__(self, vocab_size, length, rows, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(vocab_size, (rows, length + 1), generator=generator)
        self.vocab_size = vocab_size

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        row = self.tokens[index]
        return row[:-1], row[1:]
"""

# Kills train.py with SIGKILL at its KILN_FAULT_AT-th training step (once per directory).
FAULT_PLUGIN = """
import os
import signal
from pathlib import Path

import trainer.trainer

AT, MARKER, calls = int(os.environ.get("KILN_FAULT_AT", "0")), Path("fault_fired"), {"n": 0}
if AT and not MARKER.exists():
    real_step = trainer.trainer.Trainer._train_step

    def train_step(self):
        calls["n"] += 1
        if calls["n"] == AT:
            MARKER.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self)

    trainer.trainer.Trainer._train_step = train_step
"""


def lora_config(hf_dir: Path, model_type: str = "llama", **changes) -> dict:
    """8 AdamW steps of LoRA (dropout on) on the random rows, from the directory's weights;
    iteration checkpoints every 3 (iteration 3 is mid-epoch), validation every 4."""
    tokens = {"type": "lora_data.RandomTokens", "vocab_size": VOCAB, "length": SEQ, "rows": ROWS}
    lora = {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": TARGETS[model_type]}
    document = tiny_config(
        name="lora",
        imports=["lora_data"],
        model={"type": "hf", "path": str(hf_dir)},
        pretrain_path=str(hf_dir),
        loss={"type": "TokenCrossEntropy"},
        metrics=["nll"],
        data={"batch_size": 2, "val_batch_size": 4, "train": tokens, "val": tokens},
        optimizer={"type": "AdamW", "lr": 1e-2},
        scheduler={"type": "CosineAnnealingLR", "T_max": 8},
        train={"total_iters": 8, "val_interval": 4, "lora": lora},
        val={"metric": "nll", "mode": "min"},
        checkpoint={"interval": 3},
        logging={"interval": 2, "progress": False},
    )
    document.update(changes)
    return document


def prepare(directory: Path) -> None:
    """The plugins a run imports, beside its config."""
    (directory / "lora_data.py").write_text(DATA_PLUGIN)
    (directory / "fault.py").write_text(FAULT_PLUGIN)


def fit_in(directory: Path, document: dict, *overrides: str):
    """Train `document` in `directory` (its working directory) with the Trainer; return the Trainer, closed."""
    from trainer.config import load_config
    from trainer.trainer import Trainer

    previous = os.getcwd()
    os.chdir(directory)
    try:
        trainer = Trainer(load_config(write_config(directory / "config.yaml", document), list(overrides)))
        try:
            assert trainer.fit() == 0
        finally:
            trainer.close()
        return trainer
    finally:
        os.chdir(previous)


class Exported:
    """What tools/export.py did: its exit code and its stderr."""

    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


def export(checkpoint: Path, *args: str) -> Exported:
    """tools/export.py CHECKPOINT ARGS, in this process (its main, as the script runs it)."""
    code, _, stderr = call(EXPORT_TOOL, str(checkpoint), *args)
    return Exported(code, stderr)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` -> its bytes (None for a directory)."""
    return {str(path.relative_to(root)): path.read_bytes() if path.is_file() else None for path in sorted(root.rglob("*"))}


def base_sha256(folder: Path) -> str:
    """The identity Kiln records of a Hugging Face directory: the sha256 of `sha256sum`'s lines of
    its safetensors files (here the one model.safetensors), i.e. `sha256sum *.safetensors | sha256sum`."""
    line = f"{hashlib.sha256((folder / 'model.safetensors').read_bytes()).hexdigest()}  model.safetensors\n"
    return hashlib.sha256(line.encode()).hexdigest()


class Run:
    """A finished LoRA run: its directory, base directory, config, Trainer and transformers' base model."""

    def __init__(self, root: Path, model_type: str, total_iters: int = 8) -> None:
        self.root, self.model_type = root, model_type
        self.base_dir = root / "published"
        overrides = {"tie_word_embeddings": True} if model_type == "gpt2" else {}
        self.reference = save_tiny(model_type, self.base_dir, **overrides)
        prepare(root)
        self.document = lora_config(self.base_dir, model_type)
        self.document["train"]["total_iters"] = total_iters
        self.trainer = fit_in(root, self.document)
        self.weights = root / "weights"

    def final(self) -> dict[str, torch.Tensor]:
        """The adapters of the last iteration's .pth."""
        return load_params(self.weights / f"lora_iter_{self.document['train']['total_iters']}.pth")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Run:
    """One LoRA run of a tiny Llama (8 iterations), and a full fine-tune of it for scale."""
    run = Run(tmp_path_factory.mktemp("llama"), "llama")
    full = run.root / "full"
    full.mkdir()
    prepare(full)
    document = lora_config(run.base_dir, train={"total_iters": 3, "val_interval": 3})
    fit_in(full, document)
    run.full_checkpoint = full / "weights" / "lora_iter_3.pt"
    return run


@pytest.fixture(scope="module", params=["qwen2", "gpt2"])
def other(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, one_thread) -> Run:
    """A short LoRA run of another architecture (qwen2: biased projections; gpt2: Conv1D in the HF layout)."""
    return Run(tmp_path_factory.mktemp(request.param), request.param, total_iters=3)


# -- what a checkpoint holds --------------------------------------------------------------------


def test_a_lora_checkpoint_holds_the_adapters_their_optimizer_state_and_the_base_identity(llama):
    from trainer.lora import adapter_keys

    model, optimizer = llama.trainer.model, llama.trainer.optimizer
    adapters = adapter_keys(model)
    assert len(adapters) == 2 * 3 * 2  # 2 layers x 3 targets x (A, B)
    checkpoint = torch.load(llama.weights / "lora_iter_6.pt", weights_only=True)
    assert list(checkpoint["model"]) == adapters
    assert checkpoint["base"] == {"path": str(llama.base_dir), "sha256": base_sha256(llama.base_dir)}
    assert list(load_params(llama.weights / "lora_iter_6.pth")) == adapters
    assert list(load_params(llama.weights / "lora_best.pth")) == adapters
    assert torch.load(llama.weights / "lora_best.pt", weights_only=True)["base"] == checkpoint["base"]
    assert checkpoint["optimizer"]["param_groups"][0]["param_names"] == adapters
    assert len(checkpoint["optimizer"]["state"]) == len(adapters)
    # the optimizer steps the adapters only; the base is frozen and has no optimizer state
    named = dict(model.named_parameters())
    stepped = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    assert stepped == {id(named[key]) for key in adapters}
    assert all(not parameter.requires_grad for name, parameter in named.items() if name not in adapters)
    assert all(id(parameter) in stepped for parameter in optimizer.state)
    # the base weights are bit for bit the published ones after 8 steps; the adapters moved
    from safetensors.torch import load_file

    published, state = load_file(llama.base_dir / "model.safetensors"), model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in published.items())
    assert all(torch.count_nonzero(llama.final()[key]) for key in adapters if "lora_B" in key)
    code, shown, _ = call(load_tool("show_checkpoint"), str(llama.weights / "lora_iter_6.pt"))
    assert code == 0 and f"base:           {llama.base_dir}, sha256 {base_sha256(llama.base_dir)} (frozen" in shown


def test_a_lora_checkpoint_is_a_small_fraction_of_a_full_fine_tunes(llama, capsys):
    lora = (llama.weights / "lora_iter_3.pt").stat().st_size
    full = llama.full_checkpoint.stat().st_size
    with capsys.disabled():
        print(f"\n.pt of the tiny Llama at iteration 3: LoRA {lora:,} bytes, full fine-tune {full:,} bytes ({lora / full:.3f})")
    assert lora / full < 0.25


# -- export: PEFT and merged, against transformers and peft --------------------------------------


def _export_and_compare(run: Run, checkpoint: Path) -> dict:
    """Export `checkpoint` as a PEFT adapter directory and as a merged model; both give the logits
    of Kiln's LoRA model (the run's own, in memory) to assert_close's float32 defaults."""
    adapter, merged = run.root / "adapter", run.root / "merged"
    for target, extra in ((adapter, ()), (merged, ("--merge",))):
        shutil.rmtree(target, ignore_errors=True)
        result = export(checkpoint, "--format", "hf", "-o", str(target), *extra)
        assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tokens = torch.randint(VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    model = run.trainer.model.eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(run.base_dir).float().eval()
    with_adapters = peft.PeftModel.from_pretrained(base, adapter).eval()
    whole = transformers.AutoModelForCausalLM.from_pretrained(merged).float().eval()
    with torch.no_grad():
        kiln = model(tokens)
        torch.testing.assert_close(with_adapters(input_ids=tokens).logits, kiln)
        torch.testing.assert_close(whole(input_ids=tokens).logits, kiln)
        assert not torch.allclose(run.reference(input_ids=tokens).logits, kiln)  # the adapters changed something
    import json

    return json.loads((adapter / "adapter_config.json").read_text())


def test_peft_loads_the_exported_adapters_and_the_merged_model_gives_the_same_logits(llama):
    config = _export_and_compare(llama, llama.weights / "lora_iter_8.pt")
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.1)
    assert config["target_modules"] == TARGETS["llama"] and config["fan_in_fan_out"] is False
    assert config["base_model_name_or_path"] == str(llama.base_dir)
    from safetensors.torch import load_file

    tensors = load_file(llama.root / "adapter" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors and len(tensors) == 12


def test_other_architectures_export_to_peft_and_merged_with_the_same_logits(other):
    config = _export_and_compare(other, other.weights / "lora_iter_3.pt")
    assert config["fan_in_fan_out"] is (other.model_type == "gpt2")  # GPT-2's projections are Conv1D in transformers


def test_a_sharded_checkpoint_exports_too(llama, workdir):
    prepare(workdir)
    fit_in(workdir, llama.document, "checkpoint.format=sharded", "train.total_iters=3")
    result = export(workdir / "weights" / "lora_iter_3.dcp", "--format", "hf", "-o", str(workdir / "adapter"))
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    exported = load_file(workdir / "adapter" / "adapter_model.safetensors")
    expected = load_params(llama.weights / "lora_iter_3.pth")
    assert {key.removeprefix("base_model.model."): value for key, value in exported.items()}.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(exported[f"base_model.model.{key}"], value)


# -- resume ----------------------------------------------------------------------------------


def test_a_lora_run_resumes_bitwise_from_a_mid_epoch_checkpoint(llama, workdir):
    prepare(workdir)
    (workdir / "weights").mkdir()
    shutil.copy(llama.weights / "lora_iter_3.pt", workdir / "weights")
    resumed = fit_in(workdir, llama.document, "resume_path=weights/lora_iter_3.pt")
    assert resumed.position == 0 and torch.load(workdir / "weights" / "lora_iter_3.pt", weights_only=True)["position"] == 3
    assert_bitwise_equal(load_params(workdir / "weights" / "lora_iter_8.pth"), llama.final())


def test_a_lora_run_killed_by_sigkill_resumes_bitwise_with_resume_path_auto(llama, workdir):
    prepare(workdir)
    document = {**llama.document, "imports": ["lora_data", "fault"]}
    write_config(workdir / "run.yaml", document)
    killed = run_train(workdir, "-c", "run.yaml", env={"KILN_FAULT_AT": "5"})  # after the save of iteration 3
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1000:]
    assert sorted(path.name for path in (workdir / "weights").glob("lora_iter_*")) == ["lora_iter_3.pt", "lora_iter_3.pth"]
    fit_in(workdir, document, "resume_path=auto")
    assert_bitwise_equal(load_params(workdir / "weights" / "lora_iter_8.pth"), llama.final())


def test_sharded_lora_checkpoints_hold_the_adapters_and_resume_bitwise(llama, workdir):
    from trainer.checkpoint import dcp

    prepare(workdir)
    fit_in(workdir, llama.document, "checkpoint.format=sharded")
    saved = workdir / "weights" / "lora_iter_3.dcp"
    assert sorted(dcp.model_shapes(saved)) == sorted(load_params(llama.weights / "lora_iter_3.pth"))
    assert torch.load(saved / dcp.STATE_FILE, weights_only=True)["base"]["sha256"] == base_sha256(llama.base_dir)
    assert_bitwise_equal(load_params(workdir / "weights" / "lora_iter_8.pth"), llama.final())
    again = workdir / "again"
    again.mkdir()
    prepare(again)
    shutil.copytree(saved, again / "weights" / saved.name)
    fit_in(again, llama.document, "checkpoint.format=sharded", f"resume_path=weights/{saved.name}")
    assert_bitwise_equal(load_params(again / "weights" / "lora_iter_8.pth"), llama.final())


def test_a_lora_run_under_fsdp_saves_the_adapters_and_resumes_bitwise(llama, workdir):
    prepare(workdir)
    config = write_config(workdir / "run.yaml", llama.document)
    sharded = torchrun(workdir, "-c", str(config), "train.strategy=fsdp")
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    checkpoint = torch.load(workdir / "weights" / "lora_iter_3.pt", weights_only=True)
    assert list(checkpoint["model"]) == list(load_params(llama.weights / "lora_iter_3.pth"))
    assert list(checkpoint["optimizer"]["state"]) == list(checkpoint["model"])  # FSDP keys it by name: the adapters only
    resumed = workdir / "resumed"
    (resumed / "weights").mkdir(parents=True)
    prepare(resumed)
    shutil.copy(workdir / "weights" / "lora_iter_3.pt", resumed / "weights")
    again = torchrun(resumed, "-c", str(config), "train.strategy=fsdp", "resume_path=weights/lora_iter_3.pt")
    assert again.returncode == 0, again.stderr[-2000:]
    final = "weights/lora_iter_8.pth"
    assert_bitwise_equal(load_params(resumed / final), load_params(workdir / final))


def test_resuming_on_another_base_is_refused_naming_both_and_changes_nothing(llama, workdir):
    prepare(workdir)
    other = workdir / "other_base"
    save_tiny("llama", other, seed=1)  # the same architecture, other weights
    (workdir / "weights").mkdir()
    shutil.copy(llama.weights / "lora_iter_3.pt", workdir / "weights")
    document = lora_config(other, resume_path="weights/lora_iter_3.pt")
    write_config(workdir / "config.yaml", document)
    before = snapshot(workdir)
    message = error_of(lambda: fit_in(workdir, document))
    assert message == (
        f"resume_path weights/lora_iter_3.pt was trained on the base {llama.base_dir} (sha256 "
        f"{base_sha256(llama.base_dir)}), but pretrain_path is {other} (sha256 "
        f"{base_sha256(other)}), another base; set pretrain_path to the base the run was trained on "
        "(its adapters mean nothing on other weights)"
    )
    assert snapshot(workdir) == before


def test_a_lora_checkpoint_and_a_full_one_do_not_resume_as_each_other(llama, workdir):
    prepare(workdir)
    (workdir / "weights").mkdir()
    shutil.copy(llama.weights / "lora_iter_3.pt", workdir / "weights" / "adapters.pt")
    shutil.copy(llama.full_checkpoint, workdir / "weights" / "whole.pt")
    full_document = {**llama.document, "train": {**llama.document["train"], "lora": None}}
    message = error_of(lambda: fit_in(workdir, full_document, "resume_path=weights/adapters.pt"))
    assert message.startswith("resume_path weights/adapters.pt holds only the adapters of a LoRA run") and "train.lora" in message
    message = error_of(lambda: fit_in(workdir, llama.document, "resume_path=weights/whole.pt"))
    assert message.startswith("resume_path weights/whole.pt holds a whole model, but the config trains adapters")


# -- bad inputs ------------------------------------------------------------------------------------


def test_a_target_that_matches_no_linear_layer_is_exit_2_listing_them_and_changes_nothing(llama, workdir):
    prepare(workdir)
    document = lora_config(llama.base_dir)
    document["train"]["lora"]["targets"] = ["q_proj", "qproj_x", "attn"]
    write_config(workdir / "config.yaml", document)
    before = snapshot(workdir)
    result = run_train(workdir, "-c", "config.yaml")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config key train.lora.targets: 'qproj_x' matches no nn.Linear layer of the model (did you mean q_proj?); "
        "its nn.Linear layers are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"
    ]
    assert snapshot(workdir) == before


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"rank": 0}, "config key train.lora.rank: got 0 (integer), expected an integer >= 1"),
        (
            {"targets": []},
            "config key train.lora.targets: got [], expected a non-empty list of module names such as [q_proj, v_proj]",
        ),
        ({"ranks": 4}, "config key train.lora.ranks is unknown; did you mean train.lora.rank?"),
    ],
)
def test_a_bad_lora_setting_is_one_line(llama, workdir, change, expected):
    document = lora_config(llama.base_dir)
    document["train"]["lora"].update(change)
    assert error_of(lambda: fit_in(workdir, document)) == expected


def test_lora_on_a_model_without_linear_layers_is_refused(workdir):
    lora = {"rank": 2, "alpha": 4, "targets": ["conv1"]}
    document = tiny_config(model={"type": "SRCNN"}, train={"total_iters": 2, "lora": lora})
    write_config(workdir / "config.yaml", document)
    before = snapshot(workdir)
    assert error_of(lambda: fit_in(workdir, document)) == (
        "config key train.lora: model SRCNN has no nn.Linear layer, and LoRA adapts nn.Linear layers only; train it without "
        "train.lora"
    )
    assert snapshot(workdir) == before


def test_adapters_given_as_pretrain_path_are_refused_and_change_nothing(llama, workdir):
    prepare(workdir)
    adapters = llama.weights / "lora_iter_3.pth"
    document = {**lora_config(llama.base_dir, pretrain_path=str(adapters)), "train": {"total_iters": 2}}
    write_config(workdir / "config.yaml", document)
    before = snapshot(workdir)
    message = error_of(lambda: fit_in(workdir, document))
    assert message == (
        f"pretrain_path {adapters} holds LoRA adapters (e.g. model.layers.0.self_attn.q_proj.lora_A.weight), not a model's "
        "weights; set pretrain_path to the base model (and train.lora to train adapters), or export merged weights with "
        "tools/export.py CHECKPOINT --format hf --merge"
    )
    peft_dir = workdir / "peft_dir"
    assert export(llama.weights / "lora_iter_3.pt", "--format", "hf", "-o", str(peft_dir)).returncode == 0
    document["pretrain_path"] = str(peft_dir)
    write_config(workdir / "config.yaml", document)
    before = snapshot(workdir)
    assert error_of(lambda: fit_in(workdir, document)).startswith(f"pretrain_path {peft_dir} is a PEFT adapter directory")
    assert snapshot(workdir) == before


def test_export_refuses_merge_without_adapters_another_base_and_an_existing_target(llama, workdir):
    refused = export(llama.full_checkpoint, "--format", "hf", "--merge", "-o", str(workdir / "x"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "holds no LoRA adapters (a full fine-tune); export it without --merge" in refused.stderr
    refused = export(llama.weights / "lora_iter_3.pt", "--merge", "-o", str(workdir / "x.pth"))
    assert refused.returncode == 2 and "--merge writes a Hugging Face model directory; add --format hf" in refused.stderr
    checkpoint = torch.load(llama.weights / "lora_iter_3.pt", weights_only=True)
    checkpoint["base"]["sha256"] = "0" * 64  # as if the base had changed since
    torch.save(checkpoint, workdir / "moved.pt")
    refused = export(workdir / "moved.pt", "--format", "hf", "--merge", "-o", str(workdir / "x"))
    assert refused.returncode == 2 and f"was trained on the base {llama.base_dir} with sha256 {'0' * 64}" in refused.stderr
    taken = workdir / "taken"
    taken.mkdir()
    refused = export(llama.weights / "lora_iter_3.pt", "--format", "hf", "-o", str(taken))
    assert refused.returncode == 2 and "exists; pass --force" in refused.stderr
    assert not (workdir / "x").exists() and list(taken.iterdir()) == []


# -- the tools on a LoRA run's weights ----------------------------------------------------------


def test_evaluate_puts_the_adapters_on_the_configs_base_and_gives_the_runs_own_validation(llama, monkeypatch):
    monkeypatch.chdir(llama.root)  # the run's config, as its user has it
    best = torch.load(llama.weights / "lora_best.pt", weights_only=True)["best_metrics"]
    evaluate = load_tool("evaluate")
    for weights in ("weights/lora_best.pth", "weights/lora_best.pt"):  # {"params": adapters}; adapters + base identity
        results, _, _ = evaluate.evaluate_weights("config.yaml", weights, [])
        assert results["nll"] == pytest.approx(best["nll"], rel=1e-9), weights


def test_evaluate_refuses_adapters_without_train_lora_or_on_another_base(llama, workdir):
    prepare(workdir)
    whole_model = lora_config(llama.base_dir)
    del whole_model["train"]["lora"]
    write_config(workdir / "whole.yaml", whole_model)
    other = workdir / "other_base"
    save_tiny("llama", other, seed=1)  # the same architecture, other weights
    write_config(workdir / "other.yaml", lora_config(other))
    no_base = lora_config(llama.base_dir)
    del no_base["pretrain_path"]
    write_config(workdir / "no_base.yaml", no_base)
    evaluate = load_tool("evaluate")
    adapters, checkpoint = llama.weights / "lora_best.pth", llama.weights / "lora_best.pt"
    before = snapshot(workdir)
    code, out, err = call(evaluate, "-c", "whole.yaml", "--weights", str(adapters))
    assert (code, out) == (2, "")
    assert err == (
        f"error: --weights {adapters} holds LoRA adapters (e.g. model.layers.0.self_attn.q_proj.lora_A.weight), but the "
        "config has no train.lora; pass the config of the LoRA run, or export merged weights with tools/export.py "
        "CHECKPOINT --format hf --merge\n"
    )
    code, out, err = call(evaluate, "-c", "other.yaml", "--weights", str(checkpoint))
    assert (code, out) == (2, "")
    assert err == (
        f"error: --weights {checkpoint} was trained on the base {llama.base_dir} (sha256 {base_sha256(llama.base_dir)}), "
        f"but pretrain_path is {other} (sha256 {base_sha256(other)}), another base; set pretrain_path to the base the run "
        "was trained on (its adapters mean nothing on other weights)\n"
    )
    code, out, err = call(evaluate, "-c", "no_base.yaml", "--weights", str(adapters))
    assert (code, out) == (2, "")
    assert err == (
        f"error: --weights {adapters} holds LoRA adapters, but the config has no pretrain_path (their base was the seed's "
        "initialisation, which no file holds); set pretrain_path to the base the adapters were trained on\n"
    )
    assert snapshot(workdir) == before


def test_a_lora_run_with_activation_checkpointing_ends_bitwise_equal(llama, workdir):
    prepare(workdir)
    document = lora_config(llama.base_dir)  # LoRA dropout 0.1: its masks are replayed in the recomputation
    document["train"]["activation_checkpointing"] = True
    trainer = fit_in(workdir, document)
    assert trainer.model.activation_checkpointing is True
    assert_bitwise_equal(load_params(workdir / "weights" / "lora_iter_8.pth"), llama.final())
