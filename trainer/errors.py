"""The one exception type that train.py turns into exit code 2."""


class InputError(Exception):
    """A mistake in the config, the command line or an input file.

    The message is one line that names the key or file and says how to fix it; train.py prints
    it without a traceback and exits with code 2.
    """
