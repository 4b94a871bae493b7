"""Reference networks. Importing this package registers every model in trainer.registry.MODELS."""

from models import (
    gpt,  # noqa: F401  (registers GPT)
    simple_cnn,  # noqa: F401  (registers SimpleCNN, MLP)
    sr,  # noqa: F401  (registers SRCNN, EDSR)
)
