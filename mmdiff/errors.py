"""The one exception type for mistakes a user can fix (config, files, checkpoints)."""


class UserError(Exception):
    """A problem with the user's input. The message says what is wrong and how to fix it.

    The CLI prints it as one line, without a traceback, and exits with status 2.
    """
