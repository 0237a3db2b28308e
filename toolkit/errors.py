"""One exception type for mistakes a user can fix; everything else is a bug with a traceback."""

from __future__ import annotations

from pathlib import Path


def first_sentence(text: str, limit: int) -> str:
    """An exception's text on one line, up to its first sentence's end and at most `limit` characters: the reason
    a one-line error quotes."""
    return " ".join(text.split()).split(". ")[0][:limit]


class UserError(Exception):
    """A problem with the user's input, rendered as one line naming the file and the field."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        text = f"{where}: {self.message}" if where else self.message
        return " ".join(text.split())
