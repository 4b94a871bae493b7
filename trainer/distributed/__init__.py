"""The processes of a job and how the model is spread over them.

- `process.py`: `Distributed` (rank, world size, the few collectives the loop needs) and
  joining the process group from torchrun's environment.
- `slurm.py`: under `srun` without torchrun, SLURM's task variables written as torchrun's
  (rank, world size, local rank, rendezvous host and port), so the rest never knows SLURM.
- `strategy.py`: the parallel strategy as an object: single device, DDP or FSDP2, each knowing
  how to wrap the model and how to get and load model and optimizer state.
- `device.py`: choosing the device and the backend settings.

Everything here is torch.distributed; nothing is home-made. Imports only trainer.errors and
utils: checkpoints, the loop and the tools build on it, never the other way round.
"""

from trainer.distributed.device import configure_backends, resolve_device, wants_cuda
from trainer.distributed.process import DEFAULT_TIMEOUT, Distributed, from_environment

__all__ = ["DEFAULT_TIMEOUT", "Distributed", "configure_backends", "from_environment", "resolve_device", "wants_cuda"]
