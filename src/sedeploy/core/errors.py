"""User-facing errors and exit codes (no torch; every side raises them).

A `UserError` carries a one-line message that names the problem and the fix; the CLI prints it
without a traceback and exits with its `exit_code`. Exit status of every command: 0 all good;
1 some inputs failed (infer: the others still got results); 2 bad input or options (UserError,
usage); 3 an unexpected internal error (a bug); 130 interrupted.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input: shown to the user as one line, exit status 2."""

    exit_code = EXIT_USAGE
