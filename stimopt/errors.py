"""User-facing errors: one line saying what is wrong and how to fix it."""


class StimoptError(Exception):
    """An error caused by input (config, files, data); the CLI prints it as one line, no traceback."""
