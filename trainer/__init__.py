"""Kiln's trainer package: the config door, the registry, the Trainer and the rooms around it.

Layout (each package's docstring says what lives there and what it may import):

- `config/`      YAML in, a validated Config out (no torch)
- `registry.py`  name or dotted path -> class; a leaf that models/, data/ and the rest register into
- `build.py`     a run's components from its config (model, data, loss, metrics, optimizer, ...)
- `trainer.py`   the Trainer: the loop (step, log, validate, save)
- `step.py`, `optim.py`, `numerics.py`, `losses.py`, `callbacks.py`: what the loop calls
- `checkpoint/`  the CheckpointManager, the formats, readers, storage, resume and pretrain
- `distributed/` processes, the parallel strategy objects, the device
- `tracking/`    the Logger, throughput and the experiment trackers
- `guards/`      output directories and archiving, the run lock, preflight, signals
- `evaluation/`  validation, metrics and reporters
- `sweep/`       Optuna sweeps (tools/sweep.py)
"""

from trainer.errors import InputError, TrainingError

__all__ = ["InputError", "TrainingError", "run"]


def run(config) -> int:
    """Train the experiment `config` describes; return the process exit code (0, 128+signal, or
    the code of a validation callback that ended the run).

    The callbacks are composed here, outside the Trainer: a sweep trial's reporter when the
    environment tools/sweep.py gives its trials asks for one (trainer/sweep/trial_hook.py), and
    inside a SLURM job with slurm.requeue on, the requeue after a stop by SIGTERM or SIGUSR1
    (trainer/guards/requeue.py).
    """
    # Imported here so that `import trainer` (and train.py --help) stays light.
    from trainer.guards import requeue
    from trainer.sweep import trial_hook
    from trainer.trainer import Trainer

    trainer = Trainer(
        config, validation_callbacks=trial_hook.from_environment(config), stop_callbacks=requeue.from_environment(config)
    )
    try:
        return trainer.fit()
    except TrainingError as error:
        trainer.logger.info(f"error: {error}")  # train.log keeps why the run stopped
        raise
    finally:
        trainer.close()
