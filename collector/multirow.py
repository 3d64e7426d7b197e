"""Many rows per SQLite statement, for the collector's writers.

``sqlite3``'s ``executemany`` steps the statement once per row and releases
the GIL around every step.  While another thread of the process runs Python
(the collector's receive loop), each of those releases waits to get the GIL
back: with a busy receive thread the writer's rate halved
(``bench/collector_sqlite.py``).  A statement whose ``VALUES`` hold many
rows is stepped once for all of them, so that wait happens once per many
rows; it is also faster with nothing else running, as it binds and steps
less often.

A ``MultiRow`` takes rows of parameters (tuples of one length) and runs
them as statements of up to ``per_statement`` rows each: whole statements of
the largest size with one ``executemany``, the rest as at most one statement
of each smaller power of two, so only a few statement texts exist per table.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Sequence

# SQLite before 3.32 allows 999 parameters per statement; builds since then 32,766
PORTABLE_PARAMS = 999


def param_limit(conn: sqlite3.Connection) -> int:
    """The most parameters one statement of this connection may have."""
    return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


class MultiRow:
    """A statement ``head + VALUES rows + tail`` run with many rows at a time: an INSERT,
    or an ``UPDATE ... FROM (VALUES ...)``.

    ``values(j)`` gives the VALUES text of row ``j`` (0-based) in a statement:
    ``"(?,?,?)"`` for plain rows (:func:`plain`), or several tuples with
    numbered parameters when one row of parameters makes several table rows
    (:func:`fan_out`).
    """

    def __init__(self, head: str, values: Callable[[int], str], width: int, tail: str = "",
                 max_params: int = PORTABLE_PARAMS, most_rows: int = 64) -> None:
        if width <= 0:
            raise ValueError("a row needs at least one parameter")
        self.head, self.tail, self.width = head, tail, width
        self._values = values
        fit = max(1, min(most_rows, max_params // width))
        self.per_statement = 1 << (fit.bit_length() - 1)  # a power of two
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = (self.head + ",".join(self._values(j) for j in range(rows))
                                      + self.tail)
        return text

    def run(self, cur: sqlite3.Cursor, rows: Sequence[Sequence[object]]) -> None:
        """Insert ``rows``, each ``width`` parameters long, in as few steps as fit."""
        for sql, params in self.statements(rows):
            cur.executemany(sql, params)

    def statements(self, rows: Sequence[Sequence[object]]) -> list[tuple[str, list[list[object]]]]:
        """What :meth:`run` executes: (statement, parameters of each time it runs)."""
        n = len(rows)
        size = self.per_statement
        whole = n - n % size
        out: list[tuple[str, list[list[object]]]] = []
        if whole:
            out.append((self.sql(size), [list(itertools.chain.from_iterable(rows[i:i + size]))
                                         for i in range(0, whole, size)]))
        at = whole
        while at < n:
            while size > n - at:
                size >>= 1
            out.append((self.sql(size), [list(itertools.chain.from_iterable(rows[at:at + size]))]))
            at += size
        return out


def plain(width: int) -> Callable[[int], str]:
    """The VALUES text of a row of ``width`` positional parameters."""
    one = "(" + ",".join("?" * width) + ")"
    return lambda _j: one


def fan_out(fixed: int, each: int, count: int) -> Callable[[int], str]:
    """VALUES for one parameter row ``(f1..f_fixed, a1..a_count, b1..b_count, ...)`` that makes
    ``count`` table rows ``(f1..f_fixed, a_i, b_i, ...)``, with ``each`` varying columns."""
    width = fixed + each * count

    def values(j: int) -> str:
        base = j * width
        head = ",".join(f"?{base + f + 1}" for f in range(fixed))
        return ",".join(
            "(" + ",".join([head] + [f"?{base + fixed + c * count + i + 1}" for c in range(each)]) + ")"
            for i in range(count))
    return values
