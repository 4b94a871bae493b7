"""What a run reports: the console and file Logger, throughput, and the experiment trackers.

- `logger.py`: `Logger`: console + train.log + TensorBoard + tqdm; archives the best weights'
  copy; fans out to the trackers.
- `throughput.py`: samples/s, tokens/s and MFU from a model's and a dataset's counts.
- `trackers/`: one file per tracker (csv, mlflow, wandb) behind one interface; trackers never
  import the Logger.

May import trainer.config, trainer.registry, trainer.errors and utils.
"""
