"""One recording data folder per lab broker.

With a broker, every recorder reads the same Redis stream through the same consumer group. Two
recorders of two data folders -- the lab server's dashboard, and a `gamma-lab sweep --wait` on a
laptop whose own data folder's owner lock is free -- would split the lab's events between two metric
files: part of every sweep's points in a file the lab never sees. The owner lock (a flock) arbitrates
the processes of one data folder; this Redis key arbitrates data folders.

`gamma-lab:recorder` holds "<host>:<metrics file>" with a TTL the recording process refreshes while
it runs. A recorder of another folder is refused while the key is fresh (`ClaimHeld`, turned into
RecorderBusy: that process only publishes, and the lab's recorder stores its events); a recorder of
the same folder (a hand-over between processes on the server, a restart) takes it over. A claim left
by a killed recorder lapses after CLAIM_TTL_S.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEY = "gamma-lab:recorder"
CLAIM_TTL_S = 30

# take the key if it is free or already ours (refreshing its TTL); return who holds it now
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  return ARGV[1]
end
return holder
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ClaimHeld(RuntimeError):
    """Another data folder records this broker's events; `holder` names it ("<host>:<metrics file>")."""

    def __init__(self, holder: str):
        self.holder = holder
        super().__init__(
            f"the lab's recorder runs elsewhere ({holder}) and stores this broker's events; this process "
            f"only publishes (its results are in that recorder's metric file, not in this data folder's)"
        )


def identity(metrics_path: Path) -> str:
    """What the key holds for a recorder of this metric file on this machine."""
    return f"{socket.gethostname()}:{Path(metrics_path).resolve()}"


class RecorderClaim:
    """The claim of one recorder. `acquire()` raises ClaimHeld; `refresh()` (cheap, rate-limited) runs
    at every recorder step; `release()` when the recorder closes."""

    def __init__(self, client: Any, metrics_path: Path, ttl_s: int = CLAIM_TTL_S):
        self.client = client
        self.me = identity(metrics_path)
        self.ttl_s = int(ttl_s)
        self._next_refresh = 0.0
        self._warned = False

    def _claim(self) -> str:
        holder = self.client.eval(_CLAIM, 1, KEY, self.me, self.ttl_s)
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    def acquire(self) -> None:
        holder = self._claim()
        if holder != self.me:
            raise ClaimHeld(holder)
        self._next_refresh = time.monotonic() + self.ttl_s / 6

    def refresh(self) -> None:
        """Keep the key fresh. Errors (the broker is down) are left to the recorder's own reads; a key
        taken meanwhile by another folder (this process was frozen past the TTL) is said once."""
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.ttl_s / 6
        try:
            holder = self._claim()
        except Exception:  # noqa: BLE001 - the recorder's step reports broker errors itself
            return
        if holder != self.me and not self._warned:
            self._warned = True
            log.warning("another data folder took over recording this broker's events (%s)", holder)

    def release(self) -> None:
        try:
            self.client.eval(_RELEASE, 1, KEY, self.me)
        except Exception:  # noqa: BLE001 - a claim that cannot be released lapses after its TTL
            log.debug("recorder claim not released (broker unreachable); it lapses in %d s", self.ttl_s)
