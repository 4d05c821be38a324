"""Keep Python's cyclic garbage collector off the loaded models.

A worker with TensorFlow and the three default models loaded holds ~430,000 objects the
collector tracks. Every full (generation-2) collection walks them all: 230 ms with the GIL
held, so each one stalls every request of the worker. Under 64-image requests one came
every ~1,200 requests (about every 5 s per worker), which is most of those cells' p99.

``gc.freeze()`` moves every tracked object to a permanent generation that collections
skip (the Python docs suggest it for long-lived servers). It is applied after the
repository changes (a version loaded, failed or unloaded): the previous permanent
generation is released first and collected, so an unloaded model's reference cycles are
freed rather than kept for ever.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("layerscope.gc")


def settle() -> None:
    """Collect what the repository's change left behind, then freeze what survives."""
    start = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    log.info(
        "garbage collector settled: %d objects frozen, %d collected in %.0f ms",
        gc.get_freeze_count(),
        collected,
        (time.perf_counter() - start) * 1000,
    )
