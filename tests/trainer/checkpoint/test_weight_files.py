"""Weights other tools publish (trainer/checkpoint/weight_files.py): `.safetensors`, Hugging Face's sharded
index plus shards, and tied weights that such files store once.

Every file here is written the way its tool writes it (safetensors.torch.save_file; the index
layout of transformers' save_pretrained) and loaded through the path the Trainer uses
(restore.load_pretrained, or the Trainer itself), then compared tensor by tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import models  # noqa: F401  (registers Kiln's models)
from models.gpt import GPT
from tests.helpers import (
    assert_bitwise_equal,
    call,
    load_tool,
    loaded_through_pretrain,
    published_weights,
    save_sharded,
    tiny_config,
    write_config,
)
from trainer.checkpoint import CheckpointManager
from trainer.config import config_from_dict
from trainer.errors import InputError
from trainer.trainer import Trainer

TINY_GPT = {"type": "GPT", "vocab_size": 32, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}
evaluate_tool, export_tool = load_tool("evaluate"), load_tool("export")


def error_of(call_) -> str:
    """The one-line message of the InputError `call_` raises."""
    with pytest.raises(InputError) as caught:
        call_()
    assert "\n" not in str(caught.value)
    return str(caught.value)


# -- a single .safetensors file -----------------------------------------------------------------


def test_trainer_pretrains_from_a_safetensors_file_bitwise(workdir: Path):
    weights = published_weights()
    save_file(weights, workdir / "model.safetensors")
    document = tiny_config(pretrain_path="model.safetensors")
    document["logging"] = {**document["logging"], "tensorboard": False}
    trainer = Trainer(config_from_dict(document))
    try:
        assert trainer.iteration == 0
        assert_bitwise_equal(trainer.model.state_dict(), weights)
    finally:
        trainer.close()


def test_pretrain_key_and_revise_keys_apply_to_a_safetensors_file(tmp_path: Path):
    weights = published_weights()
    save_file({f"backbone.{key}": value for key, value in weights.items()}, tmp_path / "w.safetensors")
    loaded = loaded_through_pretrain(tmp_path / "w.safetensors", pretrain_revise_keys=[[r"^backbone\.", ""]])
    assert_bitwise_equal(loaded, weights)


def test_half_precision_safetensors_load_into_a_float_model(tmp_path: Path):
    weights = {key: value.half() for key, value in published_weights().items() if value.is_floating_point()}
    weights.update({key: value for key, value in published_weights().items() if not value.is_floating_point()})
    save_file(weights, tmp_path / "fp16.safetensors")  # the hub publishes many models in fp16 / bf16
    loaded = loaded_through_pretrain(tmp_path / "fp16.safetensors")
    assert all(loaded[key].dtype == torch.float32 for key in loaded if weights[key].is_floating_point())
    assert all(torch.equal(loaded[key], weights[key].to(loaded[key].dtype)) for key in weights)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-7], "Error while deserializing header: incomplete metadata, file not fully covered"),
        (lambda data: b"not a safetensors file at all", "Error while deserializing header: header too large"),
        (lambda data: b"", "Error while deserializing header: header too small"),
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_damaged_safetensors_file_is_one_line_naming_the_file(tmp_path: Path, damage, reason: str):
    save_file(published_weights(), tmp_path / "w.safetensors")
    path = tmp_path / "w.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    assert error_of(lambda: loaded_through_pretrain(path)) == (
        f"pretrain_path {path} is corrupt, truncated or not a safetensors file ({reason}); use another file"
    )


def test_missing_safetensors_file_is_one_line(tmp_path: Path):
    path = tmp_path / "nope.safetensors"
    assert error_of(lambda: loaded_through_pretrain(path)) == f"pretrain_path {path} does not exist; check the path"


def test_safetensors_file_as_resume_path_says_to_use_pretrain_path(tmp_path: Path):
    save_file(published_weights(), tmp_path / "w.safetensors")
    message = error_of(lambda: CheckpointManager(tmp_path, "tiny").load_checkpoint(tmp_path / "w.safetensors"))
    assert message == (
        f"resume_path {tmp_path / 'w.safetensors'} is a bare state dict, but resuming needs a full .pt checkpoint "
        "(<name>_iter_<N>.pt); to start from these weights, set pretrain_path instead"
    )


# -- Hugging Face sharded checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("point_at", ["index", "folder"])
def test_sharded_index_loads_bitwise_from_the_index_or_its_folder(tmp_path: Path, point_at: str, monkeypatch):
    import safetensors.torch

    weights = published_weights()
    index = save_sharded(weights, tmp_path / "hf")
    reads: list[str] = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda path, **kw: reads.append(Path(path).name) or real(path, **kw))
    loaded = loaded_through_pretrain(index if point_at == "index" else index.parent)
    assert_bitwise_equal(loaded, weights)
    assert sorted(reads) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]  # each shard read once


def test_folder_with_a_single_model_safetensors_loads_it(tmp_path: Path):
    (tmp_path / "hf").mkdir()
    save_file(published_weights(), tmp_path / "hf" / "model.safetensors")
    assert_bitwise_equal(loaded_through_pretrain(tmp_path / "hf"), published_weights())


def test_folder_without_a_model_file_names_what_to_give(tmp_path: Path):
    save_file(published_weights(), tmp_path / "other_name.safetensors")  # not a hub folder: give the file
    assert error_of(lambda: loaded_through_pretrain(tmp_path)) == (
        f"pretrain_path {tmp_path} is a directory, not a checkpoint file; give the path of a .pt, .pth or .safetensors "
        "file, of a folder with model.safetensors.index.json, or of a sharded checkpoint (<name>_iter_<N>.dcp)"
    )


def test_missing_shard_is_one_line_naming_the_shard_and_the_fix(tmp_path: Path):
    index = save_sharded(published_weights(), tmp_path / "hf")
    (index.parent / "model-00002-of-00003.safetensors").unlink()
    names = json.loads(index.read_text())["weight_map"]
    first = next(key for key, shard in names.items() if shard == "model-00002-of-00003.safetensors")
    count = sum(shard == "model-00002-of-00003.safetensors" for shard in names.values())
    assert error_of(lambda: loaded_through_pretrain(index)) == (
        f"pretrain_path {index} names shard model-00002-of-00003.safetensors ({count} tensors, e.g. {first}), which is "
        f"not in {index.parent}; download every shard the index lists into that folder"
    )


def test_tensor_the_index_names_but_its_shard_lacks_is_one_line(tmp_path: Path):
    index = save_sharded(published_weights(), tmp_path / "hf")
    document = json.loads(index.read_text())
    document["weight_map"]["head.99.weight"] = "model-00001-of-00003.safetensors"
    index.write_text(json.dumps(document))
    assert error_of(lambda: loaded_through_pretrain(index)) == (
        f"pretrain_path {index} maps 1 tensors to model-00001-of-00003.safetensors, which lacks them (e.g. head.99.weight); "
        "the index and the shards come from different saves: download them again together"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [("{not json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"), ('{"metadata": {}}', None)],
    ids=["bad-json", "no-weight-map"],
)
def test_malformed_index_is_one_line(tmp_path: Path, text: str, reason: str | None):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(text)
    assert error_of(lambda: loaded_through_pretrain(index)) == (
        f"pretrain_path {index} is not a safetensors index ({reason or 'no weight_map of tensor name -> shard file'}); "
        "it must be the JSON that save_pretrained writes beside the shards: download it again"
    )


# -- tied weights -------------------------------------------------------------------------------


def tiny_gpt(seed: int) -> GPT:
    """A tiny GPT whose lm_head.weight is its transformer.wte.weight."""
    torch.manual_seed(seed)
    return GPT(**{k: v for k, v in TINY_GPT.items() if k != "type"})


@pytest.mark.parametrize("dropped", ["lm_head.weight", "transformer.wte.weight"])
def test_tied_weights_saved_once_load_strictly_into_both_names(tmp_path: Path, dropped: str):
    source = tiny_gpt(seed=7)
    # save_pretrained and safetensors' save_model keep one of two tied tensors (safetensors refuses shared memory)
    state = {key: value.clone() for key, value in source.state_dict().items() if key != dropped}
    save_file(state, tmp_path / "gpt.safetensors")
    loaded = loaded_through_pretrain(tmp_path / "gpt.safetensors", TINY_GPT)  # strict_load: true
    assert_bitwise_equal(loaded, source.state_dict())
    assert torch.equal(loaded["lm_head.weight"], source.state_dict()["transformer.wte.weight"])
    assert not torch.equal(loaded["lm_head.weight"], tiny_gpt(seed=0).state_dict()["lm_head.weight"])


def test_sharded_gpt_with_the_tied_head_dropped_loads_strictly(tmp_path: Path):
    source = tiny_gpt(seed=7)
    state = {key: value.clone() for key, value in source.state_dict().items() if key != "lm_head.weight"}
    assert_bitwise_equal(loaded_through_pretrain(save_sharded(state, tmp_path / "hf", shards=2), TINY_GPT), source.state_dict())


def test_an_untied_key_missing_from_the_file_is_still_missing(tmp_path: Path):
    state = {key: value.clone() for key, value in tiny_gpt(seed=7).state_dict().items() if key != "transformer.wpe.weight"}
    save_file(state, tmp_path / "gpt.safetensors")
    assert error_of(lambda: loaded_through_pretrain(tmp_path / "gpt.safetensors", TINY_GPT)).startswith(
        f"pretrain_path {tmp_path / 'gpt.safetensors'} does not match the model (1 missing: transformer.wpe.weight); "
    )


def test_export_to_safetensors_round_trips_a_tied_gpt_through_pretrain_path(tmp_path: Path):
    source = tiny_gpt(seed=7)
    torch.save({"params": source.state_dict()}, tmp_path / "gpt.pth")
    code, _, err = call(export_tool, str(tmp_path / "gpt.pth"), "--format", "safetensors")
    assert code == 0, err
    assert_bitwise_equal(loaded_through_pretrain(tmp_path / "gpt.safetensors", TINY_GPT), source.state_dict())


# -- the tools ----------------------------------------------------------------------------------


def test_export_reads_a_sharded_index(tmp_path: Path):
    index = save_sharded(published_weights(), tmp_path / "hf")
    code, out, err = call(export_tool, str(index.parent), "-o", str(tmp_path / "w.pth"))
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'w.pth'}: {len(published_weights())} tensors")
    assert_bitwise_equal(torch.load(tmp_path / "w.pth", weights_only=True)["params"], published_weights())


def test_evaluate_takes_a_safetensors_file_and_a_hub_folder(workdir: Path):
    write_config(workdir / "tiny.yaml", tiny_config())
    torch.save({"params": published_weights()}, workdir / "w.pth")
    save_file(published_weights(), workdir / "w.safetensors")
    save_sharded(published_weights(), workdir / "hf", shards=2)
    results = []
    for weights in ("w.pth", "w.safetensors", "hf"):
        code, out, err = call(evaluate_tool, "-c", "tiny.yaml", "--weights", weights)
        assert code == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    assert results[0] == results[1] == results[2]  # the same tensors give the same metrics


def test_evaluate_with_a_damaged_safetensors_is_exit_2_with_one_line(workdir: Path):
    write_config(workdir / "tiny.yaml", tiny_config())
    (workdir / "w.safetensors").write_bytes(b"")
    code, _, err = call(evaluate_tool, "-c", "tiny.yaml", "--weights", "w.safetensors")
    assert code == 2
    assert err == (
        "error: --weights w.safetensors is corrupt, truncated or not a safetensors file "
        "(Error while deserializing header: header too small); use another file\n"
    )


def test_an_index_naming_a_shard_outside_its_folder_is_refused_before_any_download(tmp_path: Path):
    from trainer.checkpoint.weight_files import shard_files

    index = save_sharded(published_weights(), tmp_path / "hf")
    assert sorted(shard_files(index, "pretrain_path")) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    document = json.loads(index.read_text())
    document["weight_map"] = dict.fromkeys(document["weight_map"], "../../outside.safetensors")
    index.write_text(json.dumps(document))
    assert error_of(lambda: shard_files(index, "pretrain_path")) == (
        f"pretrain_path {index} names shard '../../outside.safetensors', which is not a file name beside the index; "
        "use the index save_pretrained wrote"
    )
