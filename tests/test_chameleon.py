"""Notebook 00's lease helpers, run through python-chi's own code with only Blazar's HTTP client
replaced: Chameleon cannot be reached here, so the test stops at the calls python-chi would send.
"""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta, timezone

import pytest

chi = pytest.importorskip("chi")

from chi import lease as chi_lease  # noqa: E402

from tritonlab import chameleon  # noqa: E402

END = datetime(2026, 11, 29, 18, 0, tzinfo=timezone.utc)


def lease_json(end: datetime = END) -> dict:
    fmt = "%Y-%m-%dT%H:%M:%S.000000"
    return {"id": "lease-1", "name": "tritonlab-student", "status": "ACTIVE",
            "user_id": "u", "project_id": "p", "created_at": "2026-11-29 15:00:00",
            "start_date": (end - timedelta(hours=3)).strftime(fmt), "end_date": end.strftime(fmt),
            "reservations": [{"id": "r1", "resource_type": "physical:host"}], "events": []}


class FakeLeases:
    """Blazar's lease API as python-chi calls it: get, list, update."""

    def __init__(self, leases: dict[str, dict]):
        self.leases, self.updates = leases, []

    def get(self, ref):
        from blazarclient.exception import BlazarClientException

        if ref not in self.leases:
            raise BlazarClientException(f"lease {ref} not found", code=404)
        return self.leases[ref]

    def list(self):
        return list(self.leases.values())

    def update(self, lease_id, **kwargs):
        self.updates.append((lease_id, kwargs))
        if kwargs.get("prolong_for") == "99h":
            raise RuntimeError("Not enough resources available")
        hours = int(kwargs["prolong_for"].removesuffix("h"))
        self.leases[lease_id] = lease_json(END + timedelta(hours=hours))


@pytest.fixture
def blazar(monkeypatch):
    fake = type("Blazar", (), {})()
    fake.lease = FakeLeases({})
    monkeypatch.setattr(chi_lease, "blazar", lambda session=None: fake)
    return fake.lease


def test_a_missing_lease_is_none_not_an_error(blazar):
    """python-chi 1.x raises for a name it cannot find; the notebook's first run must not."""
    with pytest.raises(chi.exception.CHIValueError):
        chi_lease.get_lease("tritonlab-student")
    assert chameleon.find_lease("tritonlab-student") is None


def test_a_lease_is_found_described_and_extended(blazar):
    blazar.leases["lease-1"] = lease_json()
    found = chameleon.find_lease("tritonlab-student")
    assert found.id == "lease-1"
    now = END - timedelta(hours=2, minutes=5)
    assert chameleon.describe(found, now) == ("lease tritonlab-student (ACTIVE) ends "
                                              "2026-11-29 18:00 UTC, in 2 h 05 min")
    chameleon.extend(found, 2)
    assert blazar.updates == [("lease-1", {"prolong_for": "2h"})]
    assert chameleon.time_left(found, now) == timedelta(hours=4, minutes=5)
    with pytest.raises(chameleon.LeaseError, match="host calendar"):
        chameleon.extend(found, 99)
    with pytest.raises(ValueError):
        chameleon.extend(found, 0)


def test_the_extension_uses_an_argument_blazarclient_accepts():
    from blazarclient.v1.leases import LeaseClientManager

    assert "prolong_for" in inspect.signature(LeaseClientManager.update).parameters
