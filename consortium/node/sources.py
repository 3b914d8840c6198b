"""Where a connection comes from, as the per-source limits of both ports count it, and the
connection caps the client-facing ports share (`ConnectionCaps`: the client port and the
gateway)."""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter, OrderedDict
from collections.abc import Callable

import trio


def source_group(host: str) -> str:
    """The unit a per-source limit counts: an IPv4 address, or the /64 of an IPv6 one (a single
    host commonly holds a whole /64, so its addresses are one source; an IPv4-mapped IPv6
    address is its IPv4 address). A host that is no address is its own source."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Slot:
    """An admitted connection's place under the caps; evictable until its first whole request
    (`asked`)."""

    def __init__(self, slot_id: int, source: str) -> None:
        self.id = slot_id
        self.source = source
        self.scope = trio.CancelScope()  # the owner runs the connection inside it
        self.asked = False
        self.released = False


class ConnectionCaps:
    """The connection caps of a client-facing port (the client port, the gateway): at most
    `source_connections_max` connections from one source (source_group) and
    `connections_max` in all. When either cap is full, a new connection takes the slot of one
    that has not sent its first whole request yet: the oldest from the source holding most
    such connections (for the per-source cap, the oldest from its own source), so a stranger
    holding every slot with silent connections, from however many addresses, only ever evicts
    itself, and a new client (which asks at once) gets in. Only when no connection is
    evictable is the new one refused.

    Counted in `counters`: refused_too_many_from_source, refused_too_many_connections,
    evicted_idle_first_request. Two ports' caps may share the per-source count (`sources`):
    each evicts only its own silent connections. The owner runs each admitted connection
    inside its slot's scope (an eviction cancels it), calls `asked` at its first whole request
    and `release` when it ends."""

    def __init__(
        self,
        connections_max: int,
        source_connections_max: int,
        counters: Counter[str],
        warn: Callable[[str, str], None],
        port: str = "client port",
        sources: Counter[str] | None = None,
    ) -> None:
        self.connections_max = connections_max
        self.source_connections_max = source_connections_max
        self.counters = counters
        self._warn = warn  # (a rate-limited log's warning(key, message))
        self._port = port
        # Admitted connections by source: `sources`, to share one count with another port's
        # caps (the gateway counts the client port's: one address gets its connections over
        # both ports together, not 64 on each).
        self.sources: Counter[str] = Counter() if sources is None else sources
        self.slots = 0  # admitted connections
        # Admitted connections that have not sent a whole request yet, oldest first, by source.
        self.silent: dict[str, OrderedDict[int, Slot]] = {}
        self._ids = itertools.count(1)

    def admit(self, source: str) -> Slot | str:
        """A slot for a new connection from `source` (evicting a silent one if need be), or
        why it is refused."""
        if self.sources[source] >= self.source_connections_max and not self._evict(source):
            self.counters["refused_too_many_from_source"] += 1
            return f"{self.source_connections_max} connections open from {source}"
        if self.slots >= self.connections_max and not self._evict(None):
            self.counters["refused_too_many_connections"] += 1
            return f"{self.connections_max} connections open"
        slot = Slot(next(self._ids), source)
        self.sources[source] += 1
        self.slots += 1
        self.silent.setdefault(source, OrderedDict())[slot.id] = slot
        return slot

    def asked(self, slot: Slot) -> None:
        """`slot`'s connection sent its first whole request: it is no longer evictable."""
        if not slot.asked:
            slot.asked = True
            self._unlist(slot)

    def release(self, slot: Slot) -> None:
        """Give `slot` back (once: at its eviction, or when its connection ends)."""
        if slot.released:
            return
        slot.released = True
        self._unlist(slot)
        self.slots -= 1
        self.sources[slot.source] -= 1
        if not self.sources[slot.source]:
            del self.sources[slot.source]

    def _unlist(self, slot: Slot) -> None:
        silent = self.silent.get(slot.source)
        if silent is not None:
            silent.pop(slot.id, None)
            if not silent:
                del self.silent[slot.source]

    def _evict(self, source: str | None) -> bool:
        """Close the oldest connection that has not asked yet, from `source` (None: from the
        source holding most such connections), freeing its slot now; whether there was one."""
        if source is None:
            if not self.silent:
                return False
            source = max(self.silent, key=lambda s: len(self.silent[s]))
        silent = self.silent.get(source)
        if not silent:
            return False
        _, victim = next(iter(silent.items()))
        self.counters["evicted_idle_first_request"] += 1
        self._warn(
            "evicted",
            f"closing a connection from {source} that sent no request yet: a new connection "
            f"needs its slot (the {self._port} is full)",
        )
        self.release(victim)
        victim.scope.cancel()  # it sent nothing, so it is told nothing
        return True
