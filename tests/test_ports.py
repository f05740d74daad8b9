"""Leased ports are never handed out twice while leased."""

from harness.stack.ports import lease_port


def test_leases_are_distinct_while_held():
    leases = [lease_port() for _ in range(20)]
    try:
        assert len({lease.port for lease in leases}) == 20
    finally:
        for lease in leases:
            lease.release()
