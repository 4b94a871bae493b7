"""Reference networks. Importing this package registers every model in trainer.registry.MODELS,
and the `timm/<name>` namespace (models/timm_models.py, which imports timm only when a config
names such a model)."""

from models import (
    gpt,  # noqa: F401  (registers GPT)
    hf,  # noqa: F401  (registers hf: the architecture of a Hugging Face config.json)
    llama,  # noqa: F401  (registers Llama: llama, mistral, qwen2, qwen3)
    simple_cnn,  # noqa: F401  (registers SimpleCNN, MLP)
    sr,  # noqa: F401  (registers SRCNN, EDSR)
    timm_models,
)
from trainer.registry import MODELS

MODELS.register_namespace(timm_models.PREFIX, timm_models.builder)
