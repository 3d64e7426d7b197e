"""A set of integers kept as sorted, disjoint, inclusive ranges."""

from __future__ import annotations

import bisect
from collections.abc import Iterator


class RangeSet:
    __slots__ = ("_firsts", "_lasts", "count")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self.count = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def __len__(self) -> int:
        return len(self._firsts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._firsts, self._lasts, strict=True)

    def __contains__(self, x: int) -> bool:
        i = bisect.bisect_right(self._firsts, x) - 1
        return i >= 0 and x <= self._lasts[i]

    def add(self, first: int, last: int) -> int:
        """Add ``first..last``; returns how many numbers were new."""
        if last < first:
            return 0
        before = self.count
        i = bisect.bisect_left(self._lasts, first - 1)
        j = i
        lo, hi = first, last
        while j < len(self._firsts) and self._firsts[j] <= last + 1:
            lo = min(lo, self._firsts[j])
            hi = max(hi, self._lasts[j])
            self.count -= self._lasts[j] - self._firsts[j] + 1
            j += 1
        self._firsts[i:j] = [lo]
        self._lasts[i:j] = [hi]
        self.count += hi - lo + 1
        return self.count - before

    def discard(self, x: int) -> bool:
        """Remove ``x``; True when it was there."""
        i = bisect.bisect_right(self._firsts, x) - 1
        if i < 0 or x > self._lasts[i]:
            return False
        a, b = self._firsts[i], self._lasts[i]
        if a == b:
            del self._firsts[i], self._lasts[i]
        elif x == a:
            self._firsts[i] = a + 1
        elif x == b:
            self._lasts[i] = b - 1
        else:
            self._lasts[i] = x - 1
            self._firsts.insert(i + 1, x + 1)
            self._lasts.insert(i + 1, b)
        self.count -= 1
        return True

    def remove(self, first: int, last: int) -> int:
        """Remove ``first..last``; returns how many numbers were there."""
        return sum(b - a + 1 for a, b in self.take(first, last))

    def take(self, first: int, last: int) -> list[tuple[int, int]]:
        """Remove ``first..last``; returns the ranges of the numbers that were there."""
        taken: list[tuple[int, int]] = []
        if last < first:
            return taken
        # only the ranges that overlap first..last change: those from i to j - 1
        i = bisect.bisect_left(self._lasts, first)
        j = bisect.bisect_right(self._firsts, last)
        if i >= j:
            return taken
        new_f: list[int] = []
        new_l: list[int] = []
        for a, b in zip(self._firsts[i:j], self._lasts[i:j], strict=True):
            lo, hi = max(a, first), min(b, last)
            taken.append((lo, hi))
            self.count -= hi - lo + 1
            if a < first:
                new_f.append(a)
                new_l.append(first - 1)
            if b > last:
                new_f.append(last + 1)
                new_l.append(b)
        self._firsts[i:j] = new_f
        self._lasts[i:j] = new_l
        return taken
