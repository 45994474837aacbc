"""The one exception type that scripts turn into a single clear error line."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong, on one line.

    ``setting`` names the value at fault as the library calls it (a parameter or field name such as ``image_size``,
    written so in the message), or a tuple of such names: a script words it its own way (its constant
    ``IMAGE_SIZE``, :func:`vitlrp.cli.message`), so no library message names a script's constant. ``fix`` names the
    way out when it is a step on the command line (a script to run, a flag to pass): the library only names it, and
    :func:`vitlrp.cli.run` words it (``cli.FIXES``), so no library module names a script or flag.
    """

    def __init__(self, message, fix=None, setting=None):
        super().__init__(message)
        self.fix = fix
        self.setting = setting
