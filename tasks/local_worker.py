"""A local worker process (embedded mode): `python -m tasks.local_worker`.

Claims units from the data folder's queue until it is empty, trains each, publishes events to the
spool bus, then exits. Started by tasks.local_queue.ensure_workers; safe to start by hand too.
"""

from __future__ import annotations

import logging
import sys

from storage.bus import open_publisher
from storage.settings import load_settings
from tasks import local_queue
from tasks.worker import run_unit, set_torch_threads

log = logging.getLogger("gamma_lab.local_worker")


def serve(settings=None) -> int:  # type: ignore[no-untyped-def]
    """Work until the queue is empty. Returns the number of units trained."""
    settings = settings or load_settings()
    set_torch_threads(None)
    publisher = open_publisher(settings)
    registration = local_queue.register(settings)
    local_queue.drop_stale_claims(settings)
    done = 0
    try:
        while True:
            item = local_queue.claim(settings)
            if item is None:
                # deregister first, then look once more: a unit enqueued in between is not orphaned
                local_queue.release(registration)
                if not local_queue.pending_units(settings):
                    break
                registration = local_queue.register(settings)
                continue
            path, text = item
            try:
                run_unit(text, settings, publisher)
                done += 1
            except Exception:  # a unit that cannot even be read: logged, the queue goes on
                log.exception("unit %s could not run", path.name)
            finally:
                local_queue.release(path)
    finally:
        local_queue.release(registration)
        close = getattr(publisher, "close", None)
        if callable(close):
            close()
    return done


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
