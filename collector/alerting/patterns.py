"""Topic patterns of ``match``: ``*`` is one segment, ``**`` any number of them.

A topic is ``site/device/sensor``.  ``greenhouse/*/env`` is the ``env``
sensor of every device of the greenhouse site; ``greenhouse/**`` everything
of the site; ``**`` everything.  Other segments are names, compared exactly.

A device (for ``device_offline`` rules) matches a pattern when some sensor of
it could: the pattern is matched against ``site/device/<anything>``.
"""

from __future__ import annotations

from functools import lru_cache

from sensorwire import names

_ANY = None  # a topic segment that matches anything (the unknown sensor of a device)


class Pattern:
    """A compiled ``match`` pattern; construction raises ValueError when it is bad."""

    def __init__(self, text: str) -> None:
        self.text = text
        parts = text.split("/")
        for part in parts:
            if part in ("*", "**"):
                continue
            problem = names.segment_problem(part)
            if problem:
                if "*" in part:
                    raise ValueError(
                        f"{text!r}: segment {part!r}: a segment is a name, * (one segment) "
                        "or ** (any number); wildcards inside a name are not supported"
                    )
                raise ValueError(f"{text!r}: segment {part!r} {problem}")
        fixed = sum(1 for p in parts if p != "**")
        if fixed > 3:
            raise ValueError(
                f"{text!r} can never match: a topic has 3 segments (site/device/sensor)"
            )
        # collapse runs of ** (they mean the same as one)
        out: list[str] = []
        for p in parts:
            if p == "**" and out and out[-1] == "**":
                continue
            out.append(p)
        self._parts = parts_ = tuple(out)

        def match(site: str, device: str, sensor: str | None) -> bool:
            return _match(parts_, (site, device, sensor))

        # a cached closure over the parts, not over self: a bound method would make a reference
        # cycle, and a reload's replaced patterns would wait for a full collection
        self._match = lru_cache(maxsize=65536)(match)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def matches(self, site: str, device: str, sensor: str) -> bool:
        """Whether the topic ``site/device/sensor`` matches."""
        return self._match(site, device, sensor)

    def matches_device(self, site: str, device: str) -> bool:
        """Whether some sensor of ``site/device`` could match."""
        return self._match(site, device, _ANY)


def _match(pat: tuple[str, ...], topic: tuple[str | None, ...]) -> bool:
    if not pat:
        return not topic
    head, rest = pat[0], pat[1:]
    if head == "**":
        return any(_match(rest, topic[i:]) for i in range(len(topic) + 1))
    if not topic:
        return False
    seg = topic[0]
    if head == "*" or seg is _ANY or head == seg:
        return _match(rest, topic[1:])
    return False
