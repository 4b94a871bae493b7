"""Kiln's trainer package: config, registry, Trainer, checkpoints, logging."""

from trainer.errors import InputError

__all__ = ["InputError", "run"]


def run(config) -> int:
    """Train the experiment `config` describes; return the process exit code."""
    # Imported here so that `import trainer` (and train.py --help) stays light.
    from trainer.trainer import run as _run

    return _run(config)
