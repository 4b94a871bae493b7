"""What stands between a run and harm to the user's files or time, each checked once.

- `outputs.py`: the run's log directory; output directories checked before anything is built;
  an earlier run's files moved aside before anything is written.
- `runlock.py`: one run per experiment at a time (flock).
- `preflight.py`: one batch through model, loss and metrics before anything moves.
- `signals.py`: SIGTERM/SIGINT/SIGHUP/SIGUSR1 turned into a flag the loop reads at step boundaries.
- `requeue.py`: after a stop's checkpoint, rank 0 asks SLURM to requeue the job (`slurm.requeue`).
- `data_identity.py`: what a run trains and validates on, recorded in every checkpoint and checked on resume.

May import trainer.config, trainer.checkpoint, trainer.distributed, trainer.evaluation,
trainer.step, data.loader, trainer.errors and utils; never the Trainer.
"""
