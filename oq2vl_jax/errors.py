"""The one exception type for user mistakes (bad config, missing file, shape mismatch).

Its message names the field or file and the fix. Entry points print it as one line and exit non-zero.
"""


class UserError(Exception):
    """A mistake the user can fix: the message says what and how."""


EXIT_USER_ERROR = 2  # every entry point's exit status for a UserError


def report_user_error(error: UserError) -> int:
    """Prints the error as one `error: ...` line on stderr (whitespace collapsed); returns EXIT_USER_ERROR."""
    import sys

    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return EXIT_USER_ERROR
