"""Hyperparameter sweeps over Kiln configs with Optuna (tools/sweep.py is the command line).

- spec.py: the sweep file, validated at the door into a frozen SweepSpec.
- space.py: one searched key and its distribution (log_float, float, int, choice).
- study.py: the Optuna study in its RDB storage, its sampler and pruner.
- runner.py: each trial as an ordinary `train.py` process; outcomes told to the study.
- report.py: the trials table (printed and trials.csv), best_config.yaml, TensorBoard HParams.
- trial_hook.py: inside a trial's process, reports each validation and asks the pruner.

Nothing here is imported by a plain training run: optuna stays an optional dependency.
"""
