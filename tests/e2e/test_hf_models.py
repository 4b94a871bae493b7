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


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gpt2"])
def test_greedy_generate_tool_continues_a_prompt_as_transformers_generate(workdir, model_type):
    from tests.helpers import call, load_tool
    from tests.hf_tokenizers import save_llama3_style

    tokenizer_dir = save_llama3_style(workdir / "tokenizer")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    overrides = {"vocab_size": len(hf_tokenizer), **({"head_dim": 8} if model_type == "qwen3" else {})}
    reference = save_tiny(model_type, workdir / "model", **overrides)
    corpus = workdir / "corpus.txt"
    corpus.write_text(json.__doc__ * 4)
    text = {"type": "TextTokens", "root": str(corpus), "block_size": 16, "cache_dir": str(workdir / "cache")}
    text["tokenizer"] = {"type": "hf", "path": str(tokenizer_dir)}
    document = tiny_config(
        model={"type": "hf", "path": str(workdir / "model")},
        loss={"type": "TokenCrossEntropy"},
        data={"batch_size": 2, "train": {**text, "split": "train"}, "val": {**text, "split": "val"}},
    )
    write_config(workdir / "gen.yaml", document)
    prompt, new = "def main(", 12
    code, out, err = call(
        load_tool("generate"), "-c", str(workdir / "gen.yaml"), "--weights", str(workdir / "model"),
        "--prompt", prompt, "--temperature", "0", "--max-new-tokens", str(new), "device=cpu",
    )  # fmt: skip
    assert code == 0, err
    ids = hf_tokenizer(prompt)["input_ids"]
    eos = hf_tokenizer.eos_token_id
    with torch.no_grad():
        output = reference.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new, eos_token_id=eos, pad_token_id=eos)
    continuation = output[0, len(ids) :].tolist()
    if eos in continuation:
        continuation = continuation[: continuation.index(eos)]
    assert len(continuation) > 3  # something to compare
    assert out == prompt + hf_tokenizer.decode(continuation) + "\n"


def test_the_export_of_a_run_with_an_hf_tokenizer_carries_the_tokenizer_and_its_special_ids(workdir):
    from tests.hf_tokenizers import save_llama3_style

    tokenizer_dir = save_llama3_style(workdir / "tokenizer")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = json.loads(json.dumps({**json.loads((REPO / "configs/hf/llama_tiny/config.json").read_text())}))
    config.update(vocab_size=len(hf_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=1, head_dim=8)
    (workdir / "arch").mkdir()
    (workdir / "arch" / "config.json").write_text(json.dumps(config))  # an architecture only: trained from scratch
    corpus = workdir / "corpus.txt"
    corpus.write_text(json.__doc__ * 4)
    text = {"type": "TextTokens", "root": str(corpus), "block_size": 16, "cache_dir": str(workdir / "cache")}
    text["tokenizer"] = {"type": "hf", "path": str(tokenizer_dir)}
    document = tiny_config(
        name="lm",
        model={"type": "hf", "path": str(workdir / "arch")},
        loss={"type": "TokenCrossEntropy"},
        metrics=["bpb"],
        data={"batch_size": 4, "train": {**text, "split": "train"}, "val": {**text, "split": "val"}},
        train={"total_iters": 2, "val_interval": 2},
        val={"metric": "bpb", "mode": "min"},
        checkpoint={"interval": 2},
    )
    assert train_in_process(workdir, document) == 0
    result = export(workdir / "weights" / "lm_best.pt", "--format", "hf")
    assert result.returncode == 0, result.stderr
    exported = workdir / "weights" / "lm_best_hf"
    assert sorted(p.name for p in exported.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json",
    ]  # fmt: skip
    loaded_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    sample = "def f(x):\n    return x  # é"
    assert loaded_tokenizer(sample)["input_ids"] == hf_tokenizer(sample)["input_ids"]
    written = json.loads((exported / "config.json").read_text())
    assert written["eos_token_id"] == hf_tokenizer.eos_token_id and written["bos_token_id"] == hf_tokenizer.bos_token_id
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation == {"bos_token_id": hf_tokenizer.bos_token_id, "eos_token_id": hf_tokenizer.eos_token_id,
                          "pad_token_id": hf_tokenizer.pad_token_id}  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_pretrained(exported).float().eval()
    kiln = load_params(workdir / "weights" / "lm_best.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(value, kiln[key]), key


@pytest.mark.slow
def test_a_published_llama_under_fsdp_trains_as_one_process_and_resumes_bitwise(workdir):
    from tests.helpers import assert_bitwise_equal, torchrun

    hf_dir = workdir / "published"
    save_tiny("llama", hf_dir, tie_word_embeddings=True)
    (workdir / "fixed_batch.py").write_text(FIXED_BATCH)
    document = finetune_config(hf_dir, 96, train={"total_iters": 6, "val_interval": 3}, checkpoint={"interval": 3})
    config = write_config(workdir / "ft.yaml", document)
    single = run_train(workdir, "-c", str(config), "name=single")
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = torchrun(workdir, "-c", str(config), "train.strategy=fsdp")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    reference = load_params(workdir / "weights" / "ft_iter_6.pth")
    one_process = load_params(workdir / "weights" / "single_iter_6.pth")
    assert sorted(reference) == sorted(one_process)
    for key, value in one_process.items():
        torch.testing.assert_close(reference[key], value, rtol=0, atol=1e-5)
    resumed = workdir / "resumed"
    (resumed / "weights").mkdir(parents=True)
    shutil.copy(workdir / "weights" / "ft_iter_3.pt", resumed / "weights")
    shutil.copy(workdir / "fixed_batch.py", resumed)
    result = torchrun(resumed, "-c", str(config), "train.strategy=fsdp", "resume_path=weights/ft_iter_3.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise_equal(load_params(resumed / "weights" / "ft_iter_6.pth"), reference)
