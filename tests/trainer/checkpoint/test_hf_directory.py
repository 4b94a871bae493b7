"""pretrain_path at a Hugging Face model directory: strict, shard by shard, tied heads checked, and
every bad directory one line (exit 2) naming the file or tensor; `model: {type: hf}` refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import error_of, run_train, tiny_config, write_config
from tests.hf_models import FIXED_BATCH, save_tiny
from trainer.checkpoint.hf_directory import load_model_directory
from trainer.distributed.strategy import SingleDevice

pytest.importorskip("transformers")


def build(path: Path) -> torch.nn.Module:
    """Kiln's model of a directory, as `model: {type: hf, path: ...}` builds it."""
    import models  # noqa: F401  (registers hf)
    from trainer.config.schema import Component
    from trainer.registry import MODELS, build

    return build(MODELS, Component("hf", {"path": str(path)}), key="model")


class RecordingStrategy(SingleDevice):
    """One process, remembering which keys each load call received, in the order handed over."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def load_model_state(self, model, state):
        self.calls.append(list(state))
        super().load_model_state(model, state)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A tiny tied Llama saved by transformers."""
    folder = tmp_path_factory.mktemp("published") / "llama"
    return folder, save_tiny("llama", folder, tie_word_embeddings=True)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def test_the_weights_load_exactly_and_the_tied_head_is_the_embedding(published):
    folder, reference = published
    model = build(folder)
    note = load_model_directory(model, folder)
    assert note == f"loaded pretrained weights from {folder} (Hugging Face layout, 20 tensors)"
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_sharded_directory_loads_one_shard_at_a_time(tmp_path):
    reference = save_tiny("llama", tmp_path / "src", tie_word_embeddings=False)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3
    model, strategy = build(tmp_path / "sharded"), RecordingStrategy()
    load_model_directory(model, tmp_path / "sharded", strategy)
    assert len(strategy.calls) == len(shards)  # one load per shard, each only that shard's tensors
    by_shard = [sorted(k for k, s in index["weight_map"].items() if s == shard) for shard in sorted(shards)]
    assert sorted(map(sorted, strategy.calls)) == sorted(by_shard)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_large_shard_is_handed_over_in_parts(published, monkeypatch):
    from trainer.checkpoint import hf_directory

    folder, reference = published
    sizes = {key: value.nbytes for key, value in reference.state_dict().items()}
    limit = max(sizes.values())  # the largest tensor: parts of a few tensors each
    monkeypatch.setattr(hf_directory, "PART_BYTES", limit)
    model, strategy = build(folder), RecordingStrategy()
    load_model_directory(model, folder, strategy)
    assert len(strategy.calls) >= 5  # model.safetensors, one shard, in several parts
    assert all(sum(sizes[key] for key in part[:-1]) < limit for part in strategy.calls)  # each ends at the limit
    assert sorted(key for part in strategy.calls for key in part) == sorted(set(sizes) - {"lm_head.weight"})  # tied: once
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bfloat16_weights_load_cast_to_the_models_dtype(tmp_path):
    reference = save_tiny("llama", tmp_path / "src")
    reference.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = build(tmp_path / "bf16")
    load_model_directory(model, tmp_path / "bf16")
    weight = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, reference.state_dict()["model.layers.0.mlp.up_proj.weight"].float())


def test_gpt2_weights_load_into_kilns_gpt_transposed(tmp_path):
    reference = save_tiny("gpt2", tmp_path / "gpt2")
    model = build(tmp_path / "gpt2")
    load_model_directory(model, tmp_path / "gpt2")
    hf_weight = reference.state_dict()["transformer.h.0.attn.c_attn.weight"]  # Conv1D: (in, out)
    assert torch.equal(model.state_dict()["transformer.h.0.attn.c_attn.weight"], hf_weight.t())


def rewrite_tensor(path: Path, key: str, value: torch.Tensor | None) -> None:
    """Replace (or with None remove) one tensor of a safetensors file."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    if value is None:
        del tensors[key]
    else:
        tensors[key] = value
    save_file(tensors, path, metadata={"format": "pt"})


def test_a_missing_tensor_a_wrong_shape_and_an_unexpected_tensor_name_the_tensor(published, tmp_path):
    folder, _ = published
    missing = copy_of(folder, tmp_path / "a")
    rewrite_tensor(missing / "model.safetensors", "model.norm.weight", None)
    assert error_of(lambda: load_model_directory(build(folder), missing)) == (
        f"pretrain_path {missing} lacks 1 of the model's tensors (e.g. model.norm.weight); the weights are incomplete: "
        "download every file of the model again"
    )
    shape = copy_of(folder, tmp_path / "b")
    rewrite_tensor(shape / "model.safetensors", "model.layers.1.mlp.up_proj.weight", torch.zeros(48, 16))
    assert error_of(lambda: load_model_directory(build(folder), shape)) == (
        f"pretrain_path {shape}: tensor model.layers.1.mlp.up_proj.weight in model.safetensors has shape (48, 16), the "
        "model's model.layers.1.mlp.up_proj.weight (48, 32); the weights do not match config.json: download the model again"
    )
    extra = copy_of(folder, tmp_path / "c")
    rewrite_tensor(extra / "model.safetensors", "model.layers.9.extra.weight", torch.zeros(2))
    assert "holds tensor model.layers.9.extra.weight, which the model does not have" in error_of(
        lambda: load_model_directory(build(folder), extra)
    )


def test_a_tied_config_with_a_different_head_in_the_file_is_refused(published, tmp_path):
    folder, reference = published
    differing = copy_of(folder, tmp_path)
    rewrite_tensor(differing / "model.safetensors", "lm_head.weight", torch.randn(96, 32))
    message = error_of(lambda: load_model_directory(build(folder), differing))
    assert "lm_head.weight and model.embed_tokens.weight differ in the file, but config.json ties them" in message
    same = copy_of(folder, tmp_path / "same")
    rewrite_tensor(same / "model.safetensors", "lm_head.weight", reference.state_dict()["model.embed_tokens.weight"].clone())
    load_model_directory(build(folder), same)  # a file that stores the tied head twice, equal, is fine


def test_a_config_that_does_not_describe_the_model_names_the_key(published, tmp_path):
    folder, _ = published
    other = copy_of(folder, tmp_path)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    message = error_of(lambda: load_model_directory(build(folder), other))
    assert message.startswith(f"pretrain_path {other}: its config.json does not describe the model being trained (rms_norm_eps")


def test_a_missing_shard_and_a_truncated_file_are_one_line(tmp_path):
    reference = save_tiny("llama", tmp_path / "src")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    model = build(tmp_path / "sharded")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / "sharded" / last).rename(tmp_path / last)
    assert f"names shard {last}" in error_of(lambda: load_model_directory(model, tmp_path / "sharded"))
    truncated = tmp_path / "src" / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    message = error_of(lambda: load_model_directory(build(tmp_path / "src"), tmp_path / "src"))
    assert message.startswith(f"pretrain_path {truncated} is corrupt, truncated or not a safetensors file")


def test_model_type_hf_refuses_a_directory_without_config_and_an_unsupported_architecture(tmp_path):
    (tmp_path / "empty").mkdir()
    assert error_of(lambda: build(tmp_path / "empty")) == (
        f"model.path {tmp_path / 'empty'} has no config.json; give a Hugging Face model directory (what save_pretrained "
        "or `huggingface-cli download` writes)"
    )
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert error_of(lambda: build(tmp_path / "bert")) == (
        f"model.path {tmp_path / 'bert'}: model_type 'bert' is not supported; Kiln implements llama (LlamaForCausalLM), "
        "mistral (MistralForCausalLM), qwen2 (Qwen2ForCausalLM), qwen3 (Qwen3ForCausalLM), gpt2 (GPT2LMHeadModel)"
    )


def test_train_py_with_a_bad_directory_is_exit_2_and_writes_nothing(tmp_path):
    save_tiny("llama", tmp_path / "published")
    shard = tmp_path / "published" / "model.safetensors"
    rewrite_tensor(shard, "model.layers.0.self_attn.q_proj.weight", torch.zeros(32, 31))
    (tmp_path / "fixed_batch.py").write_text(FIXED_BATCH)
    fixed = {"type": "fixed_batch.FixedTokens", "vocab_size": 96, "length": 8}
    document = tiny_config(
        imports=["fixed_batch"],
        model={"type": "hf", "path": str(tmp_path / "published")},
        pretrain_path=str(tmp_path / "published"),
        loss={"type": "TokenCrossEntropy"},
        metrics=["nll"],
        data={"batch_size": 2, "train": fixed, "val": fixed},
        val={"metric": "nll", "mode": "min"},
    )
    write_config(tmp_path / "run.yaml", document)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_train(tmp_path, "-c", "run.yaml")
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: pretrain_path {tmp_path / 'published'}: tensor model.layers.0.self_attn.q_proj.weight in model.safetensors "
            "has shape (32, 31)"
        )
    )
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
