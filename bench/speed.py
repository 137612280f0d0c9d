"""What a typed record costs without the network, and what scaling out costs a batch.

* Per record on ``MemoryBackend`` (no network): decoding and encoding the
  6-field record of :mod:`bench.records`, and cacheorm's own CPU per
  single-record call (the call's time minus the backend's own call). Targets:
  decode <= 1 µs, encode <= 1.5 µs, cacheorm's CPU per call < 3 µs.
* Scale-out: ``get_many`` and ``insert_many`` of 100 records on a 3-master
  Redis Cluster against one standalone server (target <= 1.5x), and on two
  memcached nodes against one (target <= 1.3x), in alternating rounds.
"""

from __future__ import annotations

import shutil
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

import cacheorm as co
from bench.records import ROW, compare, row
from tests.servers import start_memcached_many, start_redis, start_redis_cluster

DECODE_TARGET = 1.0
ENCODE_TARGET = 1.5
CALL_BUDGET = 3.0
CLUSTER_TARGET = 1.5
POOL_TARGET = 1.3


def _best_us(fn: Callable[[], object], number: int = 20_000) -> float:
    """The best of 7 timings of ``number`` calls, in µs per call (the least disturbed)."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def _flag(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def bench_memory() -> None:
    """Per-record codec cost and cacheorm's CPU per call, on ``MemoryBackend``."""
    backend = co.MemoryBackend()
    repo = co.Repo(ROW, backend=backend, serializer="msgpack")
    record = row(1)
    co.insert(repo, record)
    bkey = ROW.encode_key(1)
    payload = backend.get(bkey)
    assert payload is not None
    codec = repo.codec
    assert codec is not None, "the bench record takes the compiled codec"
    decode = _best_us(lambda: codec.decode(payload, bkey))
    encode = _best_us(lambda: codec.encode(record, bkey))
    print("\n== per record on MemoryBackend (µs, best of 7)          value   target")
    for name, value, target in [
        ("decode (bytes -> record)", decode, DECODE_TARGET),
        ("encode (record -> bytes)", encode, ENCODE_TARGET),
    ]:
        print(f"  {name:<53} {value:6.2f}   <= {target:.2f}  {_flag(value, target)}")
    calls: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("get", lambda: co.get(repo, 1), lambda: backend.get(bkey)),
        ("insert", lambda: co.insert(repo, record), lambda: backend.set(bkey, payload)),
        ("delete (absent)", lambda: co.delete(repo, 2), lambda: backend.delete(b"absent")),
    ]
    for name, ours, store in calls:
        total, own = _best_us(ours), _best_us(store)
        cpu = total - own
        print(
            f"  co.{name:<16} {total:6.2f} (store {own:5.2f}): cacheorm CPU   "
            f"{cpu:6.2f}   <  {CALL_BUDGET:.2f}  {_flag(cpu, CALL_BUDGET)}"
        )


def _batch_rows(name: str, big: co.Backend, one: co.Backend, target: float) -> None:
    """get_many/insert_many of 100 records on ``big`` (scaled out) against ``one``."""
    many = co.Repo(ROW, backend=big, serializer="msgpack")
    single = co.Repo(ROW, backend=one, serializer="msgpack")
    records = [row(i) for i in range(100)]
    ids = list(range(100))
    co.insert_many(many, records)
    co.insert_many(single, records)
    for label, ours, base in [
        ("get_many (100)", lambda: co.get_many(many, ids), lambda: co.get_many(single, ids)),
        (
            "insert_many (100)",
            lambda: co.insert_many(many, records),
            lambda: co.insert_many(single, records),
        ),
    ]:
        a, b, ratio = compare(ours, base, 400)
        flag = _flag(ratio, target)
        print(f"  {name:<14} {label:<18} {a:9.1f} {b:9.1f} {ratio:7.2f}   <= {target:.2f}  {flag}")


def bench_scale_out(root: Path) -> None:
    """A 3-master cluster against one server; two memcached nodes against one."""
    server = start_redis(root / "redis")
    cluster = start_redis_cluster([root / f"cluster{i}" for i in range(3)])
    first, second = start_memcached_many([root / "mc1", root / "mc2"])
    seeds = ",".join(f"{cluster.host}:{port}" for port in cluster.ports)
    try:
        print("\n== scale-out batches (µs per call)     scaled out   one node   ratio   target")
        _batch_rows(
            "redis cluster",
            co.RedisBackend(url=f"redis+cluster://{seeds}"),
            co.RedisBackend(url=server.url),
            CLUSTER_TARGET,
        )
        _batch_rows(
            "memcached x2",
            co.MemcachedBackend(servers=[first.address, second.address]),
            co.MemcachedBackend(servers=[first.address]),
            POOL_TARGET,
        )
    finally:
        server.stop()
        cluster.stop()
        first.stop()
        second.stop()


def main() -> None:
    bench_memory()
    root = Path(tempfile.mkdtemp(prefix="cacheorm-bench-speed-"))
    try:
        bench_scale_out(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
