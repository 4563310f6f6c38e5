"""Reading a claimed row's JSON columns from text, so that no value can break the claim.

The claims return every JSON column as ``::text`` (psycopg2's own jsonb parsing raised
``RecursionError``/``ValueError`` on hostile rows, inside the claim, for every worker) and read it
here with channels/safe_json.py's limits. A column that cannot be read leaves the job ``unreadable``:
the Deliverer fails it at once with that message instead of sending it.
"""

from __future__ import annotations

from typing import Any

from channels.safe_json import UnreadableJson, read_json


class JsonColumns:
    """Reads one row's JSON columns; remembers why the first unreadable one could not be read."""

    def __init__(self) -> None:
        self.unreadable: str | None = None

    def read(self, column: str, text: str | None) -> Any:
        """The column's value (None for SQL NULL or when it cannot be read)."""
        if text is None:
            return None
        try:
            return read_json(text)
        except UnreadableJson as exc:
            if self.unreadable is None:
                self.unreadable = f"{column} is not readable: {exc}"
            return None
