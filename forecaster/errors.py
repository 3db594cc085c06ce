"""Errors that name what is wrong with the input and where, so a user can fix it."""


class HistoryError(ValueError):
    """Request history that cannot be used: a bad file, row, column, query or answer.

    ``where`` names the file and row, or the Prometheus URL and query; the message says what
    is wrong with it.
    """

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class NotEnoughHistory(ValueError):
    """A model cannot be fitted on this much history; the message says how much it needs."""
