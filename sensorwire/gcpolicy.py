"""Garbage collection for a role that allocates per frame: fewer, later young collections.

CPython's cyclic collector looks at the youngest objects every 700 new
container objects.  A collector at 10,000 frames/s makes several per frame,
and most of them die about a second later, when storage has written them:
with the default threshold they are looked at, promoted, and looked at again
in older generations before they die.  A first threshold of 50,000 lets
them die first (reference counting frees them; the cyclic collector only
matters for cycles, which the data path does not make), and freezing what
start-up made keeps full collections from walking it again.  In the
10,000-devices benchmark this is about 8 % of one core.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
_settled = False


def settle() -> None:
    """Call once start-up is done: freeze what exists, collect the young less often.

    Once per process: a second collector started in the same process (tests do
    that) leaves the first freeze as it was.
    """
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 100)
