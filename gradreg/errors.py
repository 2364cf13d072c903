"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class GradregError(Exception):
    """A user-facing error: bad input, missing data, unknown name. Its message says what to do."""
