"""The one exception type that train.py turns into exit code 2."""


class InputError(Exception):
    """A mistake in the config, the command line or an input file.

    The message is one line that names the key or file and says how to fix it; train.py prints
    it without a traceback and exits with code 2.
    """


class TrainingError(Exception):
    """A run that cannot go on (a failed checkpoint write, a non-finite loss under nan_policy stop).

    train.py prints its one-line message and exits with code 1; earlier files stay intact.
    """
