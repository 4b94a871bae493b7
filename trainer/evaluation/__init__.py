"""Validation: the metrics, the reporters that add to a validation, and the loop that runs them.

- `evaluator.py`: `evaluate` (one pass over the validation batches), the Reporter protocol.
- `metrics.py`: the registered metrics (accuracy, PSNR/SSIM, nll, bpb, perplexity).
- `reporters.py`: the registered reporters (a bicubic baseline, image previews).

May import trainer.registry, trainer.errors and utils.
"""
