"""File descriptors: the limit every pending handshake and association counts against.

A pending TLS handshake costs one descriptor, an association about four (its socket, the
object being received, the index connection, a temporary file). Under a soft
``RLIMIT_NOFILE`` of 1024 (systemd services, most shells) the default pending-handshake cap
of 1024 was never reached: ``accept()`` failed with EMFILE first, so no eviction ever
happened, the accept loop spun on the readable listening socket, and every other open in
the process (objects, database, certificates) failed too. Here the soft limit is raised to
the hard one at start, and the pending-handshake cap is clamped to what is left once the
associations, the database pool and the rest of the process have their share.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Descriptors one association may hold at once: socket, object being written, index
#: connection, a temporary or spooled file.
PER_ASSOCIATION = 4
#: The database pool of the embedded SQLite index (engine.py: pool_size 8 + max_overflow 24);
#: on PostgreSQL the pool is ``MIMIC_DATABASE_POOL_SIZE`` (2 to 1000), counted as set.
DATABASE_POOL = 32
#: Everything else: interpreter, log and audit files, object store, ops listener, selectors,
#: certificate refresh, wake-up pipes; and a margin.
PROCESS = 96
#: Below this the server still runs, with a warning: a handshake cap of a few is useless.
MINIMUM_PENDING = 8
#: Never ask for more than this even where the hard limit is unlimited.
CEILING = 1 << 20


def raise_soft_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force.

    Failing to raise it is not fatal: the cap is then clamped to the lower limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return int(target if soft == resource.RLIM_INFINITY else soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning(
            "cannot raise the file descriptor limit",
            extra={"soft": soft, "hard": hard, "error": str(exc)},
        )
        return int(soft)
    return int(target)


def reserve(max_associations: int, database_pool: int = DATABASE_POOL) -> int:
    """Descriptors kept for everything that is not a pending handshake."""
    return max_associations * PER_ASSOCIATION + database_pool + PROCESS


def pending_handshake_cap(configured: int, max_associations: int, fd_limit: int,
                          database_pool: int = DATABASE_POOL) -> int:
    """The pending-handshake cap the descriptor limit allows: ``configured`` or less.

    Logged at INFO when clamped (WARNING when the limit leaves almost nothing), so that an
    operator sees why fewer handshakes wait than configured.
    """
    reserved = reserve(max_associations, database_pool)
    room = fd_limit - reserved
    if configured <= room:
        return configured
    effective = max(MINIMUM_PENDING, room)
    fields = {
        "configured": configured, "effective": effective, "fd_limit": fd_limit,
        "reserved": reserved,
    }
    if room < MINIMUM_PENDING:
        log.warning("file descriptor limit too low for the pending handshakes", extra=fields)
    else:
        log.info("pending handshake cap clamped to the file descriptor limit", extra=fields)
    return effective
