"""Errors caused by the user's input (config, overrides, files), reported without a traceback."""


class D2KDUserError(RuntimeError):
    """Bad input: the message names the culprit and, where possible, how to fix it.

    ``train_net.py`` prints such errors as one line and exits with status 2.
    """


class ConfigError(D2KDUserError, KeyError):
    """An override names a key the config does not have, or the config lacks a required part."""

    def __str__(self):  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class DatasetError(D2KDUserError):
    """A data set is not registered, or its files cannot be read."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (multi-line messages joined with "; ")."""
    parts = [p.strip() for p in str(error).splitlines() if p.strip()]
    return "; ".join(parts).replace(":;", ":")
