"""Token exchanges counted per peer in a fixed window, so that the console cannot be used to
hammer the issuer.

Anyone may take a fresh ``/auth/login`` (a single-use login state) before each made-up
``/auth/callback``: each such pair had the archive call the issuer's token endpoint, as fast
as a stranger could send them, which an issuer throttling the client id answers by locking
the real operators out (and which filled the console's own few issuer threads). Past
:data:`EXCHANGES` exchanges of one peer in a window the callback is answered 429 with
Retry-After, without a call to the issuer. Successful exchanges count too: the limit is on
calls to the issuer, not on refusals.

A peer is the address the refusals are counted by (the connection's, or behind an ingress
the one it forwarded: ``MIMIC_WEB_PROXY_HOPS``, ``web/forwarded.py``), an IPv6 address by its
/64: one host is given a whole /64, and one address each would let one stranger hold every
key. Counts are per process and forgotten when the window ends; at most ``MAX_KEYS`` peers
are held, the others share one count (as ``security.refusals`` bounds its pairs): a stranger
with that many networks can use that shared count up, and sign-ins from peers not yet
counted wait for the window's end.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import Counter
from collections.abc import Callable

from mimic_server.security.refusals import MAX_KEYS, OTHER

#: Token exchanges one peer may start per window. A person signs in a few times an hour, but
#: a hospital's NAT may put a whole department behind one address (a shift change is dozens
#: of sign-ins in minutes): generous enough for that, while a stranger's flood reaches the
#: issuer at one call in two seconds per address, not as fast as it can send.
EXCHANGES = 30
#: Seconds of one window (a fixed window: all counts start again when it ends).
WINDOW_SECONDS = 60.0


class TokenExchanges:
    """Counts one process's token exchanges per peer; thread-safe."""

    def __init__(self, limit: int = EXCHANGES, window: float = WINDOW_SECONDS, *,
                 clock: Callable[[], float] = time.monotonic, max_peers: int = MAX_KEYS
                 ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_peers = max_peers
        self._counts: Counter[str] = Counter()
        self._ends = -math.inf
        self._lock = threading.Lock()

    def admit(self, peer: str) -> int | None:
        """None: ``peer`` may exchange a code now (counted); else the whole seconds until
        its window ends (Retry-After), and nothing is counted."""
        now = self._clock()
        with self._lock:
            if now >= self._ends:
                self._counts.clear()
                self._ends = now + self.window
            key = _network(peer)
            if key not in self._counts and len(self._counts) >= self._max_peers:
                key = OTHER  # a hard bound, whatever the number of peers
            if self._counts[key] >= self.limit:
                return max(1, math.ceil(self._ends - now))
            self._counts[key] += 1
            return None


def _network(peer: str) -> str:
    """An IPv6 peer's /64, any other peer as it is."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return peer
