from __future__ import annotations

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
