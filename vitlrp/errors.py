"""The one exception type that scripts turn into a single clear error line."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong, on one line.

    ``fix`` names the way out when it is a step on the command line (a script to run, a flag to pass): the library
    only names it, and :func:`vitlrp.cli.run` words it (``cli.FIXES``), so no library module names a script or flag.
    """

    def __init__(self, message, fix=None):
        super().__init__(message)
        self.fix = fix
