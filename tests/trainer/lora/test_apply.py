"""Putting LoRA into a model (targets, freezing, errors), the optimizer over trainable parameters
only, the frozen base's identity, and the loaders that know adapter tensors are the run's own."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from tests.helpers import error_of, tiny_config
from trainer.checkpoint.frozen_base import checkpointed_keys, frozen_base_of, pretrained_keys, weights_sha256
from trainer.checkpoint.loading import load_model_state
from trainer.config import Component, config_from_dict
from trainer.config.schema import LoraConfig
from trainer.lora import LoRALinear, adapter_keys, apply_lora, apply_run_lora, merge_lora
from trainer.optim import build_optimizer

CPU = torch.device("cpu")


class Block(nn.Module):
    """An attention-like block: q_proj, v_proj and an output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8, bias=False)
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.q_proj(x) * self.v_proj(x))


class Net(nn.Module):
    """Two blocks, a norm and a head (optionally tied to an embedding)."""

    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(5, 8)
        self.layers = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = h + layer(h)
        return self.head(self.norm(h))


def lora(*targets: str, rank: int = 2) -> LoraConfig:
    return LoraConfig(rank=rank, alpha=4.0, targets=list(targets))


def test_targets_match_as_peft_s_list_does_and_only_the_adapters_train():
    model = Net()
    base = {key: value.clone() for key, value in model.state_dict().items()}
    names = apply_lora(model, lora("q_proj", "1.v_proj"))
    assert names == ["layers.0.q_proj", "layers.1.q_proj", "layers.1.v_proj"]
    assert all(isinstance(model.get_submodule(name), LoRALinear) for name in names)
    keys = list(model.state_dict())
    assert [key for key in keys if key not in base] == adapter_keys(model)
    assert adapter_keys(model)[:2] == ["layers.0.q_proj.lora_A.weight", "layers.0.q_proj.lora_B.weight"]
    assert all(key in keys for key in base)  # the base keys are what they were
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable == adapter_keys(model)
    x = torch.randint(5, (2, 3))
    assert torch.equal(model(x), Net()(x))  # B starts at zero: the base model's output, bit for bit


def test_the_optimizer_gets_the_trainable_parameters_only_and_groups_still_select_by_name():
    model = Net()
    apply_lora(model, lora("q_proj", "v_proj"))
    optimizer = build_optimizer(Component("AdamW", {"lr": 0.1}), model, CPU)
    assert optimizer.param_groups[0]["param_names"] == adapter_keys(model)
    grouped = build_optimizer(Component("AdamW", {"lr": 0.1, "param_groups": [{"params": r"lora_B", "lr": 0.01}]}), model, CPU)
    assert [group["param_names"] for group in grouped.param_groups] == [
        [key for key in adapter_keys(model) if "lora_A" in key],
        [key for key in adapter_keys(model) if "lora_B" in key],
    ]
    nothing = {"params": r"norm", "lr": 0.01}  # a frozen parameter's name selects nothing
    message = error_of(lambda: build_optimizer(Component("AdamW", {"lr": 0.1, "param_groups": [nothing]}), model, CPU))
    assert message.startswith("config key optimizer.param_groups[0]: selects none of the model's parameters")
    model.requires_grad_(False)
    assert "the model has no trainable parameters" in error_of(lambda: build_optimizer(Component("SGD", {"lr": 0.1}), model, CPU))


def test_a_target_that_matches_no_linear_layer_lists_the_layers_there_are():
    message = error_of(lambda: apply_lora(Net(), lora("q_proj", "k_proj")))
    assert message == (
        "config key train.lora.targets: 'k_proj' matches no nn.Linear layer of the model (did you mean v_proj?); "
        "its nn.Linear layers are q_proj, v_proj, out, head"
    )
    numbered = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    assert error_of(lambda: apply_lora(numbered, lora("fc"))).endswith("its nn.Linear layers are 2")
    assert error_of(lambda: apply_lora(Net(), lora("layers"))).startswith("config key train.lora.targets: 'layers' matches no")
    # MultiheadAttention uses its out_proj's weight without calling it: an adapter there would do nothing
    attention = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "fc": nn.Linear(8, 8)})
    assert error_of(lambda: apply_lora(attention, lora("out_proj"))).endswith("its nn.Linear layers are fc")


def test_a_model_without_linear_layers_and_a_tied_target_are_refused():
    convolutional = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))
    assert error_of(lambda: apply_lora(convolutional, lora("0"))) == (
        "config key train.lora: model Sequential has no nn.Linear layer, and LoRA adapts nn.Linear layers only; train it "
        "without train.lora"
    )
    assert error_of(lambda: apply_lora(Net(tied=True), lora("head"))) == (
        "config key train.lora.targets: head shares its weight with embed.weight (tied embeddings), and a LoRA update of it "
        "would change both once merged; leave head out of train.lora.targets"
    )


def test_merge_lora_leaves_plain_linear_layers_with_the_merged_weights():
    model = Net()
    apply_lora(model, lora("q_proj", "out"))
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if "lora_B" in key:
                parameter.normal_()
    x = torch.randint(5, (2, 3))
    adapted = model(x)
    merge_lora(model)
    assert not any(isinstance(module, LoRALinear) for module in model.modules())
    assert list(model.state_dict()) == list(Net().state_dict())
    torch.testing.assert_close(model(x), adapted)


def test_lora_settings_are_checked_at_the_config_door():
    def config(lora_section, **train):
        return lambda: config_from_dict(tiny_config(train={"total_iters": 2, "lora": lora_section, **train}))

    good = {"rank": 4, "alpha": 8, "targets": ["q_proj"]}
    assert config(good)().train.lora == LoraConfig(rank=4, alpha=8.0, targets=["q_proj"], dropout=0.0)
    assert config(None)().train.lora is None
    assert error_of(config({**good, "rank": 0})) == "config key train.lora.rank: got 0 (integer), expected an integer >= 1"
    assert error_of(config({**good, "alpha": -1})) == "config key train.lora.alpha: got -1 (integer), expected a number > 0"
    assert (
        error_of(config({"rank": 4, "targets": ["x"]}))
        == "config key train.lora.alpha is required but missing; expected a number"
    )
    assert error_of(config({**good, "dropout": 1})).startswith(
        "config key train.lora.dropout: got 1 (integer), expected a probability"
    )
    assert (
        error_of(config({**good, "target": ["x"]})) == "config key train.lora.target is unknown; did you mean train.lora.targets?"
    )
    assert error_of(config(good, ema=0.99)).startswith("config key train.ema: EMA is not supported with train.lora")


def test_a_run_marks_its_model_with_the_trained_keys_and_the_base_identity(tmp_path):
    base = tmp_path / "base.pth"
    torch.save({"params": Net().state_dict()}, base)
    document = tiny_config(pretrain_path=str(base), train={"total_iters": 2, "lora": {"rank": 2, "alpha": 4, "targets": ["out"]}})
    model = Net()
    apply_run_lora(model, config_from_dict(document))
    marked = frozen_base_of(model)
    assert marked.trained == frozenset(adapter_keys(model)) == checkpointed_keys(model)
    assert (marked.path, marked.sha256) == (str(base), hashlib.sha256(base.read_bytes()).hexdigest())
    assert pretrained_keys(model, model.state_dict()) == [key for key in model.state_dict() if "lora_" not in key]
    plain = Net()
    apply_run_lora(plain, config_from_dict(tiny_config()))  # no train.lora: nothing happens
    assert frozen_base_of(plain) is None and all(parameter.requires_grad for parameter in plain.parameters())
    missing = tiny_config(pretrain_path=str(tmp_path / "gone"), train={"total_iters": 2, "lora": document["train"]["lora"]})
    assert error_of(lambda: apply_run_lora(Net(), config_from_dict(missing))).startswith(
        f"pretrain_path {tmp_path / 'gone'} does not exist"
    )


def test_the_identity_of_a_directory_is_the_hash_of_sha256sum_s_lines_of_its_weight_files(tmp_path):
    from safetensors.torch import save_file

    from tests.helpers import save_sharded

    state = Net().state_dict()
    save_sharded(state, tmp_path / "sharded", shards=2)
    lines = "".join(
        f"{hashlib.sha256((tmp_path / 'sharded' / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    )
    assert weights_sha256(tmp_path / "sharded") == hashlib.sha256(lines.encode()).hexdigest()
    (tmp_path / "single").mkdir()
    save_file({key: value.contiguous() for key, value in state.items()}, tmp_path / "single" / "model.safetensors")
    assert weights_sha256(tmp_path / "single") != weights_sha256(tmp_path / "sharded")


def test_a_pretrain_state_fills_the_base_and_never_counts_adapters_as_missing():
    model = Net()
    apply_run_lora(
        model, config_from_dict(tiny_config(train={"total_iters": 2, "lora": {"rank": 2, "alpha": 4, "targets": ["out"]}}))
    )
    published = {key: value + 1 for key, value in Net().state_dict().items()}
    fresh = {key: value.clone() for key, value in model.state_dict().items() if "lora_" in key}
    expected = pretrained_keys(model, model.state_dict())
    assert not load_model_state(model, published, strict=True, source="pretrain_path x", expected=expected)
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in {**published, **fresh}.items())
    message = error_of(lambda: load_model_state(model, fresh, strict=False, source="pretrain_path y", expected=expected))
    assert message.startswith("pretrain_path y holds none of the model's tensors (")
