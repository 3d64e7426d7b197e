"""``python -m bench``: see :mod:`bench.cli`."""

from __future__ import annotations

if __name__ == "__main__":
    from bench.cli import main

    raise SystemExit(main())
