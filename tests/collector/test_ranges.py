from __future__ import annotations

import itertools
import random

from sensorwire.collector.ranges import RangeSet


def test_matches_a_plain_set() -> None:
    rng = random.Random(5)
    r = RangeSet()
    ref: set[int] = set()
    for _ in range(3000):
        op = rng.random()
        a = rng.randrange(0, 300)
        b = a + rng.randrange(0, 20)
        if op < 0.4:
            assert r.add(a, b) == len(set(range(a, b + 1)) - ref)
            ref |= set(range(a, b + 1))
        elif op < 0.8:
            assert r.discard(a) == (a in ref)
            ref.discard(a)
        else:
            assert r.remove(a, b) == len(ref & set(range(a, b + 1)))
            ref -= set(range(a, b + 1))
        assert r.count == len(ref)
        assert sorted(x for first, last in r for x in range(first, last + 1)) == sorted(ref)
        assert all((x in r) == (x in ref) for x in (a, b, a - 1, b + 1))


def test_take_returns_the_ranges_that_were_there() -> None:
    rng = random.Random(7)
    r = RangeSet()
    ref: set[int] = set()
    for _ in range(2000):
        a = rng.randrange(0, 300)
        b = a + rng.randrange(0, 30)
        if rng.random() < 0.6:
            r.add(a, b)
            ref |= set(range(a, b + 1))
            continue
        taken = r.take(a, b)
        assert [x for first, last in taken for x in range(first, last + 1)] == sorted(
            ref & set(range(a, b + 1)))
        assert all(last + 1 < first for (_, last), (first, _) in itertools.pairwise(taken))  # apart
        ref -= set(range(a, b + 1))
        assert r.count == len(ref) and len(r) == len(list(r))
        assert sorted(x for first, last in r for x in range(first, last + 1)) == sorted(ref)
