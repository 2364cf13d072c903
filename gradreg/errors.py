"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class GradregError(Exception):
    """A user-facing error: bad input, missing data, unknown name. Its message says what to do."""


class ResultsMissing(GradregError):
    """A grid whose settings come from other stored results (weights chosen on a validation sweep)
    asked for before those results exist; the message names the command that makes them."""
