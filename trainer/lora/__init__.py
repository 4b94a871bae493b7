"""LoRA: low-rank adapters trained on a frozen base (config key `train.lora`).

- `layers.py`: `LoRALinear`, the adapted nn.Linear (Kiln's own module; why: its docstring).
- `apply.py`: matching `train.lora.targets`, wrapping and freezing (`apply_lora`), and for a run
  (`apply_run_lora`, composed in trainer/build.py) marking the model with its trained keys and
  its base's identity, which the checkpoint formats read (trainer/checkpoint/frozen_base.py):
  a LoRA run's checkpoints hold the adapters, never the frozen base.
- `peft.py`: the adapters as a PEFT adapter directory, or merged into the base (tools/export.py).
- `weights.py`: a LoRA run's adapter-only `.pth`/`.pt` put back on its base, for tools/evaluate.py
  and tools/generate.py.

A layer above trainer/checkpoint (it marks models for it) and below the loop (trainer/build.py):
it imports config, checkpoint, errors and utils, never models/ or the Trainer.
"""

from trainer.lora.apply import adapter_keys, apply_lora, apply_run_lora, lora_layers, merge_lora, target_modules
from trainer.lora.layers import LoRALinear

__all__ = ["LoRALinear", "adapter_keys", "apply_lora", "apply_run_lora", "lora_layers", "merge_lora", "target_modules"]
