"""The cost of one ``get`` and one 100-key ``get_many`` on every backend.

Backends move bytes only, so this measures the storage layer alone, on
throwaway servers (and a temp directory) the script starts and removes itself.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import cacheorm as co
from tests.servers import start_memcached_many, start_redis, start_redis_cluster

REPEATS = 5
VALUE = b"x" * 100


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


@contextmanager
def backends(root: Path) -> Iterator[dict[str, co.Backend]]:
    redis = start_redis(root / "redis")
    cluster = start_redis_cluster([root / f"cluster-{i}" for i in range(3)])
    memcached = start_memcached_many([root / f"mc-{i}" for i in range(3)])
    made: dict[str, co.Backend] = {
        "memory": co.MemoryBackend(),
        "filesystem": co.FileSystemBackend(root / "fs"),
        "redis": co.RedisBackend(url=redis.url),
        "redis cluster (3 masters)": co.RedisBackend(client=cluster.client()),
        "memcached": co.MemcachedBackend(servers=[memcached[0].address]),
        "memcached (2 nodes)": co.MemcachedBackend(servers=[m.address for m in memcached[1:]]),
        "tiered (memory + redis)": co.TieredBackend(
            co.MemoryBackend(), co.RedisBackend(url=redis.url)
        ),
    }
    try:
        yield made
    finally:
        for backend in made.values():
            backend.close()
        redis.stop()
        cluster.stop()
        for node in memcached:
            node.stop()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cacheorm-bench-backends-"))
    try:
        print(f"\n== backends: median µs per call of {REPEATS} runs (100-byte values)")
        print(f"  {'backend':<28} {'get':>9} {'get_many(100)':>14}")
        with backends(root) as made:
            keys = [f"bench:{i}".encode() for i in range(100)]
            for name, backend in made.items():
                backend.set_many(dict.fromkeys(keys, VALUE))
                one = per_call_us(partial(backend.get, keys[0]), 500)
                many = per_call_us(partial(backend.get_many, *keys), 50)
                print(f"  {name:<28} {one:9.1f} {many:14.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
