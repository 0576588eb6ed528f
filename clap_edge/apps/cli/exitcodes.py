"""The exit codes of every ``clap-edge`` command, defined once."""

OK = 0
SOME_FAILED = 1  # some inputs (images, backends) failed and are reported; the rest were done
BAD_INPUT = 2  # bad user input, a bad bundle, or a missing extra: one line on stderr, nothing done

__all__ = ["OK", "SOME_FAILED", "BAD_INPUT"]
