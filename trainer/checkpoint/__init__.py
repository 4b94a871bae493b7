"""Checkpoints: what a run saves, where, in which format, and how it starts again from one.

- `manager.py`: `CheckpointManager`, the format-agnostic policy: names, schedule
  (`should_save`), `latest`, `prune`, archiving an earlier run's files.
- `layout.py`: the keys and the layout of a full checkpoint (`make_checkpoint`), clean keys.
- `formats/`: one class per on-disk format behind one small interface (`file`: .pt + .pth;
  `sharded`: a torch.distributed.checkpoint .dcp directory); formats never import the manager.
- `files.py`: reading one file safely (torch.load weights_only, safetensors, a URL's download).
- `dcp.py`: reading torch.distributed.checkpoint directories safely (allowlisted metadata).
- `readers.py`: the one place that decides how a path is read (URL, .dcp, .pt/.pth,
  safetensors, a Hugging Face folder), used by resume, pretrain and every tool.
- `loading.py`: loading a state dict into a model, with the report of what did not match.
- `storage.py`: local directories and fsspec URLs behind the same few operations.
- `weight_files.py`: safetensors files and Hugging Face sharded indexes.
- `restore.py`: where a run starts: resume a checkpoint, or load pretrained weights.
- `frozen_base.py`: a model that trains only part of itself on a frozen base (LoRA): which keys
  its checkpoints hold, and the base's identity (`base: {path, sha256}`) checked on resume.

May import trainer.config, trainer.distributed, trainer.optim, trainer.errors and utils; never
the Trainer, the Logger or the guards. Every read is `torch.load(weights_only=True)` or
safetensors: checkpoint files are untrusted input.
"""

from trainer.checkpoint.files import load_file
from trainer.checkpoint.layout import (
    AUTO_WEIGHT_KEYS,
    FORMAT_VERSION,
    KEY_BEST,
    KEY_CONFIG,
    KEY_EPOCH,
    KEY_FORMAT,
    KEY_ITERATION,
    KEY_MODEL,
    KEY_OPTIMIZER,
    KEY_RUN_ID,
    KEY_SCHEDULER,
    KEY_WEIGHTS,
    TrainingState,
    clean_state_dict,
    make_checkpoint,
)
from trainer.checkpoint.loading import LoadReport, load_model_state
from trainer.checkpoint.manager import CheckpointManager
from trainer.checkpoint.readers import extract_weights, read_checkpoint, read_weights, read_whole, revise_keys
from trainer.checkpoint.writer import to_host

__all__ = [
    "AUTO_WEIGHT_KEYS",
    "FORMAT_VERSION",
    "KEY_BEST",
    "KEY_CONFIG",
    "KEY_EPOCH",
    "KEY_FORMAT",
    "KEY_ITERATION",
    "KEY_MODEL",
    "KEY_OPTIMIZER",
    "KEY_RUN_ID",
    "KEY_SCHEDULER",
    "KEY_WEIGHTS",
    "CheckpointManager",
    "LoadReport",
    "TrainingState",
    "clean_state_dict",
    "extract_weights",
    "load_file",
    "load_model_state",
    "make_checkpoint",
    "revise_keys",
    "read_checkpoint",
    "read_weights",
    "read_whole",
    "to_host",
]
