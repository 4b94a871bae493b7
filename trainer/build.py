"""Building a run's components from its config: the plugins that register them first."""

from __future__ import annotations

import importlib
import os
import sys

from trainer.errors import InputError


def import_plugins(modules: list[str]) -> None:
    """Import the config's `imports:` (user modules that register components)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user modules beside the config's working directory
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise InputError(f"config key imports: cannot import {name!r} ({error}); check the module name") from None
    import data  # noqa: F401  (registers Kiln's datasets)
    import models  # noqa: F401  (registers Kiln's models)
    import trainer.evaluation.metrics  # noqa: F401  (registers Kiln's metrics)
    import trainer.evaluation.reporters  # noqa: F401  (registers Kiln's validation reporters)
    import trainer.losses  # noqa: F401  (registers Kiln's losses)
