"""The Chameleon lease behind notebook 00: find it by name, say how long it has left, extend it.

GPU nodes are few and charged per node-hour, so the course asks for short leases
(`LEASE_HOURS`) and extends them when needed rather than holding a node all day. Runs in
Chameleon's JupyterHub, where python-chi (1.2.10 here) is installed and logged in; imported
lazily so the rest of the course never needs it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

#: Hours a new lease lasts: a course session with room to spare. Extend it (`extend`) if a
#: session runs long; a lease ends by itself at its end date, deleting the server on it.
LEASE_HOURS = 3

#: Where to reserve a node ahead of time when none is free now (Chameleon's web site).
HOST_CALENDAR_HELP = (
    "Reserve one in advance: on the Chameleon web site of that site, open Reservations > Leases >"
    " Host Calendar, find a time when a {node_type} node is free, and create a lease there for"
    " one {node_type} node named '{name}' (or set START in this notebook to that time and re-run"
    " this cell). When the lease starts, re-run this notebook: it reuses the lease by its name."
)


class LeaseError(RuntimeError):
    """A lease operation Chameleon refused; the message says what to do next."""


def find_lease(name: str):
    """The lease called `name` (a python-chi `Lease`), or None when there is none.

    python-chi 1.x raises CHIValueError for a name it cannot find, rather than returning None.
    """
    from chi import lease
    from chi.exception import CHIValueError

    try:
        return lease.get_lease(name)
    except CHIValueError:
        return None


def time_left(found, now: datetime | None = None) -> timedelta:
    """How long until the lease ends (negative once it has ended)."""
    end = found.end_date
    if end.tzinfo is None:  # Blazar's dates are UTC
        end = end.replace(tzinfo=timezone.utc)
    return end - (now or datetime.now(timezone.utc))


def describe(found, now: datetime | None = None) -> str:
    """'lease NAME (ACTIVE) ends 2026-11-29 18:00 UTC, in 2 h 05 min'."""
    left = time_left(found, now)
    minutes = int(left.total_seconds() // 60)
    when = (f"in {minutes // 60} h {minutes % 60:02d} min" if minutes >= 0
            else f"{-minutes} min ago")
    end = found.end_date.strftime("%Y-%m-%d %H:%M")
    return f"lease {found.name} ({found.status}) ends {end} UTC, {when}"


def extend(found, hours: int):
    """Move the lease's end `hours` later (Blazar's `prolong_for`); returns it refreshed.

    Raises LeaseError when Chameleon refuses, as it does when another reservation of the node
    starts right after yours: then reserve a new lease on the host calendar.
    """
    from chi import lease

    if hours < 1:
        raise ValueError("extend by at least one hour")
    try:
        lease.blazar().lease.update(found.id, prolong_for=f"{int(hours)}h")
    except Exception as exc:  # blazarclient raises its own exception types
        raise LeaseError(
            f"Chameleon did not extend lease {found.name} by {hours} h: {exc}. Usually the node "
            "is reserved by someone else right after your lease; save your work, and reserve a "
            "new lease on the host calendar (see section 2).") from None
    found.refresh()
    return found
