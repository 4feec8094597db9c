"""The one exception type for user mistakes (bad config, missing file, shape mismatch).

Its message names the field or file and the fix. Entry points print it as one line and exit non-zero.
"""


class UserError(Exception):
    """A mistake the user can fix: the message says what and how."""
