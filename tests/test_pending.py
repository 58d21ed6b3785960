"""The pending table's policy, without sockets: who is admitted, who gives way."""

from __future__ import annotations

import ipaddress
import random

from pgtls_proxy.pending import (
    EVICTED,
    PENDING_FULL,
    PER_SOURCE,
    Admitted,
    Entry,
    PendingTable,
    Refused,
    source_key,
)


def admit(
    table: PendingTable[str], key: str, name: str = "", *, capped: bool = True
) -> Admitted[str]:
    verdict = table.admit(key, name or key, capped=capped)
    assert isinstance(verdict, Admitted), verdict
    return verdict


def test_per_source_cap_refuses_the_source_not_others() -> None:
    table: PendingTable[str] = PendingTable(max_pending=100, per_source=3)
    for _ in range(3):
        admit(table, "a")
    assert table.admit("a", "a4") == Refused(PER_SOURCE)
    admit(table, "b")
    assert (table.count("a"), table.count("b"), len(table)) == (3, 1, 4)


def test_full_table_evicts_the_oldest_of_the_biggest_source() -> None:
    table: PendingTable[str] = PendingTable(max_pending=6, per_source=10)
    for i in range(4):
        admit(table, "attacker", f"x{i}")
    admit(table, "b", "b0")
    admit(table, "b", "b1")
    verdict = admit(table, "newcomer")
    assert verdict.evicted is not None and verdict.evicted.handle == "x0"
    assert not verdict.evicted.live
    assert (table.count("attacker"), table.count("b"), table.count("newcomer")) == (3, 2, 1)
    assert len(table) == 6
    # Next: the attacker still holds the most, and loses its next oldest.
    verdict = admit(table, "c")
    assert verdict.evicted is not None and verdict.evicted.handle == "x1"


def test_a_source_at_the_top_is_refused_rather_than_evicting_an_equal() -> None:
    table: PendingTable[str] = PendingTable(max_pending=4, per_source=10)
    for key in ("a", "a", "b", "b"):
        admit(table, key)
    # a holds 2, the biggest holds 2: no gain in fairness, so no eviction.
    assert table.admit("a", "a3") == Refused(PENDING_FULL)
    # One more than the newcomer's source is not enough either (they would swap).
    table2: PendingTable[str] = PendingTable(max_pending=3, per_source=10)
    for key in ("a", "a", "b"):
        admit(table2, key)
    assert table2.admit("b", "b2") == Refused(PENDING_FULL)
    # A source with none gets in at the expense of one holding two.
    assert admit(table2, "c").evicted is not None


def test_a_single_connection_is_never_evicted() -> None:
    """However an attacker churns, a source holding one connection keeps it."""
    table: PendingTable[str] = PendingTable(max_pending=50, per_source=50)
    good = admit(table, "good", "good").entry
    rng = random.Random(7)
    entries: list[Entry[str]] = []
    for i in range(5000):
        key = f"attacker{rng.randrange(20)}" if rng.random() < 0.9 else f"fresh{i}"
        verdict = table.admit(key, key)
        if isinstance(verdict, Admitted):
            entries.append(verdict.entry)
        if entries and rng.random() < 0.3:
            table.release(entries.pop(rng.randrange(len(entries))))
        assert good.live
        assert len(table) <= 50
    assert table.count("good") == 1


def test_many_attacker_addresses_leave_room_for_an_unseen_one() -> None:
    """5,000 connections over 50 addresses, then a newcomer: it gets in."""
    table: PendingTable[str] = PendingTable(max_pending=1024, per_source=128)
    refused = 0
    for i in range(5000):
        if isinstance(table.admit(f"10.0.0.{i % 50}", "x"), Refused):
            refused += 1
    assert len(table) == 1024
    assert refused > 0
    verdict = admit(table, "127.0.0.1", "good")
    assert verdict.evicted is not None and verdict.evicted.key.startswith("10.0.0.")


def test_release_is_idempotent_and_keeps_counts() -> None:
    table: PendingTable[str] = PendingTable(max_pending=10, per_source=10)
    a = admit(table, "a").entry
    admit(table, "a")
    table.release(a)
    table.release(a)
    assert (len(table), table.count("a"), table.sources()) == (1, 1, 1)


def test_biggest_source_is_tracked_as_counts_go_up_and_down() -> None:
    table: PendingTable[str] = PendingTable(max_pending=7, per_source=10)
    a = [admit(table, "a").entry for _ in range(3)]
    b = [admit(table, "b").entry for _ in range(4)]
    for entry in b[:3]:
        table.release(entry)  # b: 1, a: 3 is the biggest now
    admit(table, "c")
    admit(table, "c")
    admit(table, "d")  # full: a(3) b(1) c(2) d(1) = 7
    verdict = admit(table, "e")
    assert verdict.evicted is a[0]
    assert table.count("a") == 2


def test_uncapped_entries_skip_the_per_source_cap_until_moved() -> None:
    """A PROXY-protocol listener's TCP peer is the balancer: no per-source cap on it."""
    table: PendingTable[str] = PendingTable(max_pending=100, per_source=2)
    via_lb = [admit(table, "lb", f"c{i}", capped=False).entry for i in range(5)]
    assert table.count("lb") == 5
    assert table.move(via_lb[0], "203.0.113.7")
    assert table.move(via_lb[1], "203.0.113.7")
    # The real client address is capped like any other source.
    assert not table.move(via_lb[2], "203.0.113.7")
    assert table.move(via_lb[2], "203.0.113.8")
    assert (table.count("lb"), table.count("203.0.113.7"), len(table)) == (2, 2, 5)
    # Released entries cannot be moved back in.
    table.release(via_lb[3])
    assert not table.move(via_lb[3], "203.0.113.9")


def test_reasons_are_the_metric_labels() -> None:
    from pgtls_proxy.metrics import REFUSAL_REASONS

    assert {PENDING_FULL, PER_SOURCE, EVICTED} <= set(REFUSAL_REASONS)


def test_ipv6_sources_are_grouped_by_64() -> None:
    a = ipaddress.ip_address("2001:db8:1:2::1")
    b = ipaddress.ip_address("2001:db8:1:2:ffff::9")
    c = ipaddress.ip_address("2001:db8:1:3::1")
    assert source_key(a) == source_key(b) == "2001:db8:1:2::/64"
    assert source_key(c) != source_key(a)
    assert source_key(ipaddress.ip_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert source_key(ipaddress.ip_address("192.0.2.1")) == "192.0.2.1"
