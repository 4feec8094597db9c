"""What entry points show the user: the one exception type for user mistakes (bad config, missing file, shape
mismatch), printed as one line with a non-zero exit, and the log filter that keeps library chatter out.

A UserError's message names the field or file and the fix.
"""

import logging
import os


class UserError(Exception):
    """A mistake the user can fix: the message says what and how."""


EXIT_USER_ERROR = 2  # every entry point's exit status for a UserError


def report_user_error(error: UserError) -> int:
    """Prints the error as one `error: ...` line on stderr (whitespace collapsed); returns EXIT_USER_ERROR."""
    import sys

    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return EXIT_USER_ERROR


class QuietLibraries(logging.Filter):
    """Keeps our INFO lines and every library's warnings; drops library INFO chatter (Orbax logs each save and
    restore). Entry points add it to absl's handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}oq2vl_jax{os.sep}" in record.pathname
