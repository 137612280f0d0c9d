"""The one behaviour suite every backend must pass.

Written once against the :class:`cacheorm.Backend` protocol and run, through
the ``backend`` fixture, on every backend kind (memory, filesystem, redis,
redis cluster, memcached, a memcached pool, tiered). Servers cannot use a fake
clock, so all real-time expiry checks share a single short sleep.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm.backends.base import (
    Add,
    Cas,
    Delete,
    DeleteIf,
    Get,
    Gets,
    Has,
    Incr,
    Replace,
    Set,
)

ODD_KEYS = (
    b"with space",
    b"ctl\x01char",
    b"nul\x00byte",
    b"line\nbreak",
    "ключ-ü-鍵".encode(),
    b"k" * 300,
    b"k" * 299 + b"j",
    b"k" * 250,
    b"%20",
    b"with_space",
)
BAD_TTLS = (-1, 1.5, True, False)
MONTH_AND_A_DAY = 31 * 24 * 3600


# -- plain storage ------------------------------------------------------------


def test_get_missing_is_none(backend: co.Backend) -> None:
    assert backend.get(b"absent") is None
    assert backend.has(b"absent") is False


def test_set_then_get_and_overwrite(backend: co.Backend) -> None:
    backend.set(b"k", b"v1")
    assert backend.get(b"k") == b"v1"
    backend.set(b"k", b"v2")
    assert backend.get(b"k") == b"v2"
    assert backend.has(b"k") is True


def test_add_stores_only_when_absent(backend: co.Backend) -> None:
    assert backend.add(b"k", b"first") is True
    assert backend.add(b"k", b"second") is False
    assert backend.get(b"k") == b"first"


def test_replace_stores_only_when_present(backend: co.Backend) -> None:
    assert backend.replace(b"k", b"v") is False
    assert backend.get(b"k") is None
    backend.set(b"k", b"old")
    assert backend.replace(b"k", b"new") is True
    assert backend.get(b"k") == b"new"


def test_delete_reports_whether_the_key_existed(backend: co.Backend) -> None:
    backend.set(b"k", b"v")
    assert backend.delete(b"k") is True
    assert backend.get(b"k") is None
    assert backend.has(b"k") is False
    assert backend.delete(b"k") is False


def test_all_byte_values_and_empty_value_round_trip(backend: co.Backend) -> None:
    every_byte = bytes(range(256))
    backend.set(b"bin", every_byte)
    backend.set(b"empty", b"")
    assert backend.get(b"bin") == every_byte
    assert backend.get(b"empty") == b""
    assert backend.has(b"empty") is True
    assert backend.get_many(b"empty", b"bin") == [b"", every_byte]
    got = backend.gets(b"empty")
    assert got is not None
    assert got[0] == b""


def test_value_of_a_few_hundred_kilobytes_round_trips(backend: co.Backend) -> None:
    big = bytes(range(256)) * 1200  # 300 KiB, under memcached's 1 MiB default
    backend.set(b"big", big)
    assert backend.get(b"big") == big


def test_odd_keys_are_stored_and_kept_distinct(backend: co.Backend) -> None:
    for i, key in enumerate(ODD_KEYS):
        backend.set(key, b"value-%d" % i)
    assert [backend.get(key) for key in ODD_KEYS] == [b"value-%d" % i for i in range(len(ODD_KEYS))]
    assert backend.get_many(*ODD_KEYS) == [b"value-%d" % i for i in range(len(ODD_KEYS))]
    assert backend.delete(ODD_KEYS[0]) is True
    assert backend.get(ODD_KEYS[0]) is None
    assert backend.get(ODD_KEYS[-1]) == b"value-%d" % (len(ODD_KEYS) - 1)
    assert backend.incr(ODD_KEYS[1] + b"-counter", 3) == 3
    assert backend.add(ODD_KEYS[5], b"x") is False


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.dictionaries(
        st.binary(min_size=1, max_size=300), st.binary(max_size=64), min_size=1, max_size=5
    )
)
def test_any_keys_and_values_round_trip_distinctly(
    backend: co.Backend, pairs: dict[bytes, bytes]
) -> None:
    backend.set_many(pairs)
    keys = list(pairs)
    assert backend.get_many(*keys) == [pairs[k] for k in keys]
    assert backend.delete_many(*keys) == len(keys)


# -- many keys at once -------------------------------------------------------------


def test_get_many_keeps_order_with_missing_keys(backend: co.Backend) -> None:
    backend.set(b"a", b"1")
    backend.set(b"c", b"3")
    assert backend.get_many(b"c", b"missing", b"a", b"other") == [b"3", None, b"1", None]
    assert backend.get_many() == []


def test_get_with_ttl_tells_the_remaining_lifetime(backend: co.Backend) -> None:
    assert backend.get_with_ttl(b"absent") is None
    assert backend.get_many_with_ttl() == []
    backend.set(b"never", b"n", 0)
    backend.set(b"default", b"d")  # default_ttl is 0 on every fixture backend
    backend.set(b"hundred", b"h", 100)
    backend.set(b"with space", b"odd", 100)
    backend.set(b"long", b"l", MONTH_AND_A_DAY)
    assert backend.get_with_ttl(b"never") == (b"n", 0.0)
    assert backend.get_with_ttl(b"default") == (b"d", 0.0)
    hit = backend.get_with_ttl(b"hundred")
    assert hit is not None
    assert hit[0] == b"h"
    assert 98 <= hit[1] <= 100
    found = backend.get_many_with_ttl(
        b"long", b"absent", b"hundred", b"never", b"other", b"with space"
    )
    assert [None if f is None else f[0] for f in found] == [b"l", None, b"h", b"n", None, b"odd"]
    seconds = [None if f is None else f[1] for f in found]
    assert MONTH_AND_A_DAY - 2 <= (seconds[0] or 0) <= MONTH_AND_A_DAY
    assert 98 <= (seconds[2] or 0) <= 100
    assert seconds[3] == 0.0
    assert 98 <= (seconds[5] or 0) <= 100


def test_get_with_ttl_follows_touch_cas_and_counters(backend: co.Backend) -> None:
    backend.set(b"k", b"v", 100)
    assert backend.touch(b"k", 50) is True
    hit = backend.get_with_ttl(b"k")
    assert hit is not None
    assert 48 <= hit[1] <= 50
    got = backend.gets(b"k")
    assert got is not None
    assert backend.cas(b"k", b"v2", got[1], co.KEEP_TTL) is True
    hit = backend.get_with_ttl(b"k")
    assert hit is not None
    assert hit[0] == b"v2"
    assert 47 <= hit[1] <= 50
    assert backend.touch(b"k", 0) is True
    assert backend.get_with_ttl(b"k") == (b"v2", 0.0)
    assert backend.incr(b"n", 3) == 3
    assert backend.get_many_with_ttl(b"n", b"k") == [(b"3", 0.0), (b"v2", 0.0)]
    backend.delete(b"k")
    assert backend.get_many_with_ttl(b"k", b"n") == [None, (b"3", 0.0)]


def test_set_many_then_get_many(backend: co.Backend) -> None:
    mapping = {b"k%d" % i: b"v%d" % i for i in range(20)}
    backend.set_many(mapping)
    assert backend.get_many(*mapping) == list(mapping.values())
    backend.set_many({})


def test_replace_many_reports_each_key(backend: co.Backend) -> None:
    backend.set(b"a", b"old-a")
    backend.set(b"c", b"old-c")
    result = backend.replace_many({b"a": b"new-a", b"b": b"new-b", b"c": b"new-c"})
    assert result == [True, False, True]
    assert backend.get_many(b"a", b"b", b"c") == [b"new-a", None, b"new-c"]
    assert backend.replace_many({}) == []


def test_delete_many_counts_existing_keys(backend: co.Backend) -> None:
    backend.set_many({b"a": b"1", b"b": b"2", b"c": b"3"})
    assert backend.delete_many(b"a", b"missing", b"c") == 2
    assert backend.get_many(b"a", b"b", b"c") == [None, b"2", None]
    assert backend.delete_many() == 0


# -- counters -----------------------------------------------------------------


def test_incr_and_decr_start_from_zero_and_go_negative(backend: co.Backend) -> None:
    assert backend.incr(b"n") == 1
    assert backend.incr(b"n", 5) == 6
    assert backend.decr(b"n", 10) == -4
    assert backend.incr(b"n", 0) == -4
    assert backend.incr(b"n", 7) == 3
    assert backend.get(b"n") == b"3"
    assert backend.decr(b"fresh") == -1
    assert backend.decr(b"fresh", 2) == -3
    assert backend.incr(b"fresh", -2) == -5
    assert backend.get(b"fresh") == b"-5"


def test_incr_reads_a_counter_stored_as_decimal_digits(backend: co.Backend) -> None:
    backend.set(b"n", b"41")
    assert backend.incr(b"n") == 42
    backend.set(b"neg", b"-10")
    assert backend.incr(b"neg", 3) == -7


def test_incr_of_a_non_integer_raises_and_keeps_the_value(backend: co.Backend) -> None:
    backend.set(b"text", b"hello")
    with pytest.raises(co.ValidationError):
        backend.incr(b"text")
    assert backend.get(b"text") == b"hello"


def test_counters_stay_in_signed_64_bits(backend: co.Backend) -> None:
    top, bottom = 2**63 - 1, -(2**63)
    backend.set(b"top", str(top).encode())
    with pytest.raises(co.ValidationError):
        backend.incr(b"top")
    assert backend.get(b"top") == str(top).encode()
    assert backend.decr(b"top", top) == 0
    backend.set(b"bottom", str(bottom).encode())
    with pytest.raises(co.ValidationError):
        backend.decr(b"bottom")
    assert backend.get(b"bottom") == str(bottom).encode()


# -- TTLs -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_TTLS)
def test_illegal_ttl_is_rejected_before_writing(backend: co.Backend, bad: object) -> None:
    backend.set(b"present", b"v")
    with pytest.raises(co.ValidationError):
        backend.set(b"k", b"v", bad)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(co.ValidationError):
        backend.add(b"k", b"v", bad)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(co.ValidationError):
        backend.replace(b"present", b"changed", bad)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(co.ValidationError):
        backend.set_many({b"k": b"v"}, bad)  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(co.ValidationError):
        backend.touch(b"present", bad)  # type: ignore[arg-type]  # the point of the test
    got = backend.gets(b"present")
    assert got is not None
    with pytest.raises(co.ValidationError):
        backend.cas(b"present", b"changed", got[1], bad)  # type: ignore[arg-type]  # the point of the test
    assert backend.get(b"k") is None
    assert backend.get(b"present") == b"v"


def test_ttl_longer_than_thirty_days_is_stored(backend: co.Backend) -> None:
    backend.set(b"long", b"v", MONTH_AND_A_DAY)
    backend.set_many({b"long-many": b"v"}, MONTH_AND_A_DAY)
    assert backend.add(b"long-add", b"v", MONTH_AND_A_DAY) is True
    assert backend.touch(b"long-add", MONTH_AND_A_DAY * 2) is True
    assert backend.get_many(b"long", b"long-many", b"long-add") == [b"v", b"v", b"v"]


def test_touch_reports_whether_the_key_exists(backend: co.Backend) -> None:
    assert backend.touch(b"absent", 100) is False
    backend.set(b"k", b"v")
    assert backend.touch(b"k", 100) is True
    assert backend.touch(b"k", 0) is True
    assert backend.touch(b"k") is True
    assert backend.get(b"k") == b"v"


def test_expiry_with_real_time(backend: co.Backend, backend_kind: str) -> None:
    """Every real-clock expiry rule, checked after one shared sleep.

    Keys expected to expire are read before the sleep too: a copy a tiered
    backend keeps in ``near`` must expire with the entry it copies.
    """
    backend.set(b"set-1", b"v", 1)
    assert backend.add(b"add-1", b"v", 1) is True
    backend.set(b"replace-1", b"old")
    assert backend.replace(b"replace-1", b"v", 1) is True
    backend.set_many({b"many-1a": b"v", b"many-1b": b"v"}, 1)
    backend.set(b"touch-1", b"v")
    assert backend.touch(b"touch-1", 1) is True
    backend.set(b"touch-0", b"v", 1)
    assert backend.touch(b"touch-0", 0) is True
    backend.set(b"never", b"v", 0)
    backend.set(b"default", b"v")  # default_ttl is 0 on every fixture backend
    backend.set(b"long", b"v", 100)
    backend.set(b"cas-keep", b"v", 1)
    got = backend.gets(b"cas-keep")
    assert got is not None
    assert backend.cas(b"cas-keep", b"v2", got[1], co.KEEP_TTL) is True
    backend.set(b"cas-0", b"v", 1)
    got = backend.gets(b"cas-0")
    assert got is not None
    assert backend.cas(b"cas-0", b"v2", got[1], 0) is True
    backend.set(b"cas-1", b"v")
    got = backend.gets(b"cas-1")
    assert got is not None
    assert backend.cas(b"cas-1", b"v2", got[1], 1) is True
    assert backend.incr(b"counter-1", 5) == 5
    assert backend.touch(b"counter-1", 1) is True
    gone = [b"set-1", b"add-1", b"replace-1", b"many-1a", b"many-1b", b"touch-1"]
    gone += [b"cas-keep", b"cas-1", b"counter-1"]
    assert None not in backend.get_many(*gone)
    assert None not in [backend.get(k) for k in gone]
    assert None not in backend.get_many_with_ttl(*gone)

    # memcached's clock ticks once a second, so a 1 s TTL may last almost 2 s.
    time.sleep(2.1 if backend_kind.startswith("memcached") else 1.1)

    kept = [b"touch-0", b"never", b"default", b"long", b"cas-0"]
    assert backend.get_many(*gone) == [None] * len(gone)
    assert [backend.get(k) for k in gone] == [None] * len(gone)
    assert [backend.has(k) for k in gone] == [False] * len(gone)
    assert backend.get_many_with_ttl(*gone) == [None] * len(gone)
    assert backend.get_many(*kept) == [b"v", b"v", b"v", b"v", b"v2"]
    assert backend.add(b"set-1", b"again") is True
    assert backend.get(b"set-1") == b"again"
    assert backend.replace(b"add-1", b"x") is False
    assert backend.touch(b"touch-1", 10) is False
    assert backend.incr(b"counter-1") == 1


# -- compare-and-set ---------------------------------------------------------------


def test_gets_of_a_missing_key_is_none(backend: co.Backend) -> None:
    assert backend.gets(b"absent") is None


def test_cas_succeeds_when_unchanged(backend: co.Backend) -> None:
    backend.set(b"k", b"v1")
    got = backend.gets(b"k")
    assert got is not None
    value, token = got
    assert value == b"v1"
    assert backend.cas(b"k", b"v2", token) is True
    assert backend.get(b"k") == b"v2"
    assert backend.cas(b"k", b"v3", token) is False  # the token is used up
    assert backend.get(b"k") == b"v2"


def test_cas_fails_after_a_concurrent_set_and_writes_nothing(backend: co.Backend) -> None:
    backend.set(b"k", b"v1")
    got = backend.gets(b"k")
    assert got is not None
    backend.set(b"k", b"other writer")
    assert backend.cas(b"k", b"mine", got[1]) is False
    assert backend.get(b"k") == b"other writer"


def test_cas_fails_when_the_key_disappeared(backend: co.Backend) -> None:
    backend.set(b"k", b"v1")
    got = backend.gets(b"k")
    assert got is not None
    backend.delete(b"k")
    assert backend.cas(b"k", b"mine", got[1]) is False
    assert backend.get(b"k") is None


def test_delete_if_deletes_only_when_unchanged(backend: co.Backend) -> None:
    backend.set(b"k", b"v1")
    got = backend.gets(b"k")
    assert got is not None
    backend.set(b"k", b"v2")
    assert backend.delete_if(b"k", got[1]) is False
    assert backend.get(b"k") == b"v2"
    fresh = backend.gets(b"k")
    assert fresh is not None
    assert backend.delete_if(b"k", fresh[1]) is True
    assert backend.get(b"k") is None
    assert backend.delete_if(b"k", fresh[1]) is False


# -- batch ------------------------------------------------------------------------


def test_batch_runs_mixed_commands_in_order(backend: co.Backend) -> None:
    backend.set(b"x", b"x0")
    backend.set(b"gone", b"g")
    x = backend.gets(b"x")
    gone = backend.gets(b"gone")
    assert x is not None
    assert gone is not None
    results = backend.batch(
        [
            Set(b"a", b"1"),
            Get(b"a"),
            Add(b"a", b"2"),
            Add(b"b", b"b1", ttl=100),
            Replace(b"c", b"c1"),
            Replace(b"b", b"b2"),
            Get(b"missing"),
            Incr(b"n", delta=5),
            Incr(b"n", delta=-7),
            Has(b"b"),
            Has(b"missing"),
            Cas(b"x", b"x1", token=x[1]),
            Cas(b"x", b"x2", token=x[1]),
            DeleteIf(b"gone", token=gone[1]),
            Delete(b"b"),
            Delete(b"b"),
            Get(b"b"),
            Get(b"x"),
        ]
    )
    assert results == [
        True,
        b"1",
        False,
        True,
        False,
        True,
        None,
        5,
        -2,
        True,
        False,
        True,
        False,
        True,
        True,
        False,
        None,
        b"x1",
    ]
    assert backend.get_many(b"a", b"b", b"c", b"n", b"x", b"gone") == [
        b"1",
        None,
        None,
        b"-2",
        b"x1",
        None,
    ]


def test_batch_gets_returns_tokens_usable_by_cas(backend: co.Backend) -> None:
    backend.set(b"k", b"v")
    first, missing = backend.batch([Gets(b"k"), Gets(b"absent")])
    assert missing is None
    assert isinstance(first, tuple)
    assert first[0] == b"v"
    assert backend.cas(b"k", b"v2", first[1]) is True
    assert backend.get(b"k") == b"v2"


def test_batch_puts_a_failed_command_in_its_slot(backend: co.Backend) -> None:
    results = backend.batch(
        [
            Set(b"a", b"1"),
            Set(b"bad", b"v", ttl=-5),
            Get(b"a"),
        ]
    )
    assert results[0] is True
    assert isinstance(results[1], co.ValidationError)
    assert results[2] == b"1"
    assert backend.get(b"bad") is None


def test_batch_of_nothing_and_of_one(backend: co.Backend) -> None:
    assert backend.batch([]) == []
    assert backend.batch([Get(b"absent")]) == [None]
    assert backend.batch([Incr(b"n", delta=2)]) == [2]


# -- concurrency ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_concurrent_cas_increments_lose_nothing(backend: co.Backend) -> None:
    threads, per_thread = 8, 50
    backend.set(b"counter", b"0")
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                while True:
                    got = backend.gets(b"counter")
                    assert got is not None
                    if backend.cas(b"counter", b"%d" % (int(got[0]) + 1), got[1]):
                        break
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert backend.get(b"counter") == b"%d" % (threads * per_thread)


@pytest.mark.timeout(60)
def test_concurrent_add_has_exactly_one_winner(backend: co.Backend) -> None:
    threads = 8
    start = threading.Barrier(threads)
    wins: list[bool] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        start.wait()
        won = backend.add(b"lock", b"%d" % i)
        with lock:
            wins.append(won)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(wins) == [False] * (threads - 1) + [True]
    winner = backend.get(b"lock")
    assert winner is not None
    assert int(winner) in range(threads)


@pytest.mark.timeout(60)
def test_concurrent_incr_counts_every_call(backend: co.Backend) -> None:
    threads, per_thread = 8, 50
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            backend.incr(b"hits")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert backend.get(b"hits") == b"%d" % (threads * per_thread)
