"""The two error types a user sees: bad input data and bad configuration."""
from __future__ import annotations


class PolyfuseError(Exception):
    """Base class of every error Polyfuse raises on purpose."""


class ConfigError(PolyfuseError, ValueError):
    """A configuration value or combination that cannot work."""


class InputError(PolyfuseError, ValueError):
    """One cell (or row, or table) of the user's data is unusable.

    Carries where it happened so that the message names the file, row and column,
    and so that `--on-bad-row skip` can write the reason to skipped.csv.
    """

    def __init__(self, reason: str, *, table: str | None = None, row: int | None = None,
                 column: str | None = None, file: str | None = None):
        self.reason, self.table, self.row, self.column, self.file = reason, table, row, column, file
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.table is not None:
            where.append(str(self.table))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.file is not None:
            where.append(f"file '{self.file}'")
        return (", ".join(where) + ": " if where else "") + self.reason

    def at(self, *, table=None, row=None, column=None) -> "InputError":
        """The same error with the location filled in by the caller that knows it."""
        return InputError(self.reason, table=table if table is not None else self.table,
                          row=row if row is not None else self.row,
                          column=column if column is not None else self.column, file=self.file)
