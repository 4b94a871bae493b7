"""Published models end to end, against the real transformers: train.py fine-tunes a model in the
Hugging Face layout (`model: {type: hf}` + `pretrain_path: DIR`) to the same weights as the same
SGD steps on transformers' model (training parity), and tools/export.py --format hf writes a
directory transformers loads, tensor for tensor the file it came from."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, load_params, run_train, tiny_config, train_in_dir, train_in_process, write_config
from tests.hf_models import FIXED_BATCH, LLAMA3_ROPE, save_tiny

transformers = pytest.importorskip("transformers")

EXPORT_PY = REPO / "tools" / "export.py"
STEPS, LR, SEQ = 3, 0.5, 12

CASES = {
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-llama3-rope": ("llama", {"rope_scaling": LLAMA3_ROPE}),
    "qwen2": ("qwen2", {}),
    "qwen3-untied": ("qwen3", {"head_dim": 8, "tie_word_embeddings": False}),
    "mistral": ("mistral", {"sliding_window": None}),
    "gpt2": ("gpt2", {}),
}


def finetune_config(hf_dir: Path, vocab_size: int, **changes) -> dict:
    """`STEPS` plain SGD steps on the fixed batch, from the directory's weights."""
    fixed = {"type": "fixed_batch.FixedTokens", "vocab_size": vocab_size, "length": SEQ}
    document = tiny_config(
        name="ft",
        imports=["fixed_batch"],
        model={"type": "hf", "path": str(hf_dir)},
        pretrain_path=str(hf_dir),
        loss={"type": "TokenCrossEntropy"},
        metrics=["nll"],
        data={"batch_size": 2, "val_batch_size": 2, "train": fixed, "val": fixed},
        optimizer={"type": "SGD", "lr": LR},
        train={"total_iters": STEPS, "val_interval": STEPS},
        val={"metric": "nll", "mode": "min"},
        checkpoint={"interval": STEPS},
    )
    document.pop("scheduler", None)
    document.update(changes)
    return document


def reference_steps(model: torch.nn.Module, rows: torch.Tensor, steps: int, lr: float) -> dict[str, torch.Tensor]:
    """`steps` SGD steps of transformers' model on (inputs, targets) = rows shifted by one, loss the
    mean cross-entropy over the target tokens; its state dict afterwards."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    for _ in range(steps):
        logits = model(input_ids=inputs).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def export(checkpoint: Path, *args: str) -> subprocess.CompletedProcess:
    """python tools/export.py CHECKPOINT ARGS."""
    return subprocess.run([sys.executable, str(EXPORT_PY), str(checkpoint), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", sorted(CASES))
def test_finetuning_gives_the_weights_transformers_gives_and_exports_back(workdir, case):
    model_type, overrides = CASES[case]
    hf_dir = workdir / "published"
    reference = save_tiny(model_type, hf_dir, **overrides)
    (workdir / "fixed_batch.py").write_text(FIXED_BATCH)
    vocab = reference.config.vocab_size
    assert train_in_process(workdir, finetune_config(hf_dir, vocab)) == 0

    rows = torch.randint(vocab, (2, SEQ + 1), generator=torch.Generator().manual_seed(0))  # FixedTokens' rows
    expected = reference_steps(reference, rows, STEPS, LR)
    exported = workdir / "exported"
    result = export(workdir / "weights" / f"ft_iter_{STEPS}.pt", "--format", "hf", "-o", str(exported))
    assert result.returncode == 0, result.stderr
    loaded = transformers.AutoModelForCausalLM.from_pretrained(exported).float().eval()
    for key, value in expected.items():  # tied heads appear under both names in both state dicts
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    assert type(loaded).__name__ == type(reference).__name__


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_import_then_export_gives_every_tensor_of_the_original_file(workdir, model_type):
    hf_dir = workdir / "published"
    reference = save_tiny(model_type, hf_dir, tie_word_embeddings=model_type == "gpt2")
    (workdir / "fixed_batch.py").write_text(FIXED_BATCH)
    document = finetune_config(hf_dir, reference.config.vocab_size, optimizer={"type": "SGD", "lr": 0.0})
    assert train_in_process(workdir, document) == 0
    exported = workdir / "exported"
    assert export(workdir / "weights" / f"ft_iter_{STEPS}.pt", "--format", "hf", "-o", str(exported)).returncode == 0
    from safetensors.torch import load_file

    original, written = load_file(hf_dir / "model.safetensors"), load_file(exported / "model.safetensors")
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        assert torch.equal(written[key], value), key
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == reference.config.architectures
    assert transformers.AutoConfig.from_pretrained(exported).to_dict()["vocab_size"] == reference.config.vocab_size
    assert (exported / "generation_config.json").is_file()
    tokens = torch.randint(reference.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(exported).float().eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, reference(tokens).logits)


def test_a_large_model_is_exported_in_shards_with_an_index_transformers_reads(workdir, monkeypatch):
    from trainer.checkpoint import hf_export

    hf_dir = workdir / "published"
    reference = save_tiny("llama", hf_dir)
    (workdir / "fixed_batch.py").write_text(FIXED_BATCH)
    assert train_in_process(workdir, finetune_config(hf_dir, 96, optimizer={"type": "SGD", "lr": 0.0})) == 0
    monkeypatch.setattr(hf_export, "MAX_SHARD_BYTES", 16 * 1024)  # 16 KiB shards for an 85 KiB model
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import export as export_tool

    assert export_tool.main([str(workdir / "weights" / f"ft_iter_{STEPS}.pt"), "--format", "hf", "-o", "out"]) == 0
    index = json.loads((workdir / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (workdir / "out" / "model.safetensors").exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(workdir / "out").float().eval()
    tokens = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, reference(tokens).logits)
    # and Kiln reads its own sharded export as pretrain_path
    document = finetune_config(workdir / "out", 96, optimizer={"type": "SGD", "lr": 0.0}, name="again")
    assert train_in_process(workdir, document) == 0
    again = load_params(workdir / "weights" / f"again_iter_{STEPS}.pth")
    assert torch.equal(again["model.embed_tokens.weight"], reference.state_dict()["model.embed_tokens.weight"])


def test_export_refuses_an_existing_target_a_vision_model_and_a_weights_only_file(workdir):
    hf_dir = workdir / "published"
    save_tiny("llama", hf_dir)
    (workdir / "fixed_batch.py").write_text(FIXED_BATCH)
    assert train_in_process(workdir, finetune_config(hf_dir, 96)) == 0
    checkpoint = workdir / "weights" / f"ft_iter_{STEPS}.pt"
    taken = workdir / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = export(checkpoint, "--format", "hf", "-o", str(taken))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {taken} exists; pass --force to replace it, or -o to write elsewhere"
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert export(checkpoint, "--format", "hf", "-o", str(taken), "--force").returncode == 0
    assert (taken / "model.safetensors").is_file() and not (taken / "keep.txt").exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".taken")]  # no staging left behind

    weights_only = export(workdir / "weights" / f"ft_iter_{STEPS}.pth", "--format", "hf", "-o", str(workdir / "x"))
    assert weights_only.returncode == 2 and "needs a full checkpoint" in weights_only.stderr
    assert weights_only.stderr.count("\n") == 1 and not (workdir / "x").exists()

    vision = workdir / "vision"
    vision.mkdir()
    document = tiny_config(train={"total_iters": 2, "val_interval": 2}, checkpoint={"interval": 2})
    assert train_in_dir(vision, document) == 0
    refused = export(vision / "weights" / "tiny_iter_2.pt", "--format", "hf", "-o", str(workdir / "cnn"))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: checkpoint {vision / 'weights' / 'tiny_iter_2.pt'}: model 'SimpleCNN' has no Hugging Face equivalent; "
        "--format hf exports ['GPT', 'Llama', 'hf'] (use --format safetensors for other models)"
    )
    assert not (workdir / "cnn").exists()


def test_a_published_llama_resumes_bitwise(workdir):
    hf_dir = workdir / "published"
    save_tiny("llama", hf_dir)
    (workdir / "fixed_batch.py").write_text(FIXED_BATCH)
    document = finetune_config(
        hf_dir,
        96,
        optimizer={"type": "AdamW", "lr": 1e-3},
        train={"total_iters": 6, "val_interval": 3},
        checkpoint={"interval": 3},
    )
    assert train_in_process(workdir, document) == 0
    reference = load_params(workdir / "weights" / "ft_iter_6.pth")
    resumed = workdir / "resumed"
    (resumed / "weights").mkdir(parents=True)
    shutil.copy(workdir / "weights" / "ft_iter_3.pt", resumed / "weights")
    shutil.copy(workdir / "fixed_batch.py", resumed)
    write_config(resumed / "ft.yaml", document)
    result = run_train(resumed, "-c", "ft.yaml", "resume_path=weights/ft_iter_3.pt")
    assert result.returncode == 0, result.stderr
    resumed_weights = load_params(resumed / "weights" / "ft_iter_6.pth")
    assert sorted(resumed_weights) == sorted(reference)
    assert all(torch.equal(resumed_weights[key], reference[key]) for key in reference)
