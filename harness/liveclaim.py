"""A run's claim on the shared ledger, sent again while it trains with its loss curve so far: the live view of
another host draws the curve of a run whose log is not on that host.

    uv run pytest tests/test_web.py -k claim

Only for the shared database (a file ledger's runs are on the host that serves its view, which reads their logs).
Every LIVE_CLAIM_S the claim is written again from a thread of its own (a slow or unreachable database never
holds a training step); stop() is called before the run is recorded, and waits for a write in flight, so that the
record's deletion of the claim is the last word and no finished run is shown as running.
"""

from __future__ import annotations

import threading
import time

from harness.prune import thin_curve

LIVE_CLAIM_S = 10.0             # between two writes of the claim: a view that polls every 0.5 s is at most this late


class LiveClaim:
    def __init__(self, store, claim: dict):
        self.store, self.claim = store, dict(claim)
        self.shared = hasattr(store, "db")
        self.sent_at, self.thread, self.stopped = time.monotonic(), None, False

    def update(self, curve: list) -> None:
        """After a step: the claim again with `curve` ((progress, smoothed loss) pairs), at most every LIVE_CLAIM_S."""
        now = time.monotonic()
        if (not self.shared or self.stopped or now - self.sent_at < LIVE_CLAIM_S
                or (self.thread is not None and self.thread.is_alive())):
            return
        self.sent_at = now
        claim = dict(self.claim, curve=thin_curve(list(curve)), steps=len(curve))
        thread = threading.Thread(target=self._send, args=(claim,), name="live-claim", daemon=True)
        thread.start()                          # started before it is kept: stop() never joins an unstarted one
        self.thread = thread

    def _send(self, claim: dict) -> None:
        if not self.stopped and not self.store.claim(claim, quiet=True):
            self.stopped = True                  # the database is away: no more tries (the first claim said so)

    def stop(self) -> None:
        """No write after this returns (the run is about to be recorded, which deletes the claim)."""
        self.stopped = True
        if self.thread is not None:
            self.thread.join()
