"""The one exception type that scripts turn into a single clear error line."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and how to fix it, on one line."""
