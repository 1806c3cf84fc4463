"""The error sampling and evaluation raise for bad input (the CLI prints it and exits with 2)."""


class EvaluationError(ValueError):
    """Bad input to sampling or metrics: the message names the problem and the fix."""
