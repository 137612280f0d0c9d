"""Serializer overhead: cacheorm's serializers against the bare library calls.

Run with ``python -m bench.serializers``. For a typical 6-field record
(int, str, float, bool, str, ISO datetime string) it prints the microseconds
of one encode + decode through each serializer and wrapper next to the bare
library call on the same dict (``msgpack.packb/unpackb``, ``json.dumps/loads``,
``pickle.dumps/loads``), all measured in the same run, then the measurements
behind the msgpack hot-path choices.
"""

from __future__ import annotations

import json
import pickle
import statistics
import timeit
from collections.abc import Callable

import msgpack

import cacheorm as co

RECORD: dict[str, co.Primitive] = {
    "id": 12345,
    "name": "Samantha Example",
    "height": 178.8,
    "married": True,
    "email": "sam@example.com",
    "created_at": "2024-05-17T12:34:56.789012+00:00",
}
SECRET = b"bench-secret-0123456789abcdef!!"
REPEATS = 15


def _batch_size(fn: Callable[[], object]) -> int:
    number, _ = timeit.Timer(fn).autorange()  # calls per >= 0.2 s
    return max(1, number // 10)


def measure(*fns: Callable[[], object]) -> list[tuple[float, float]]:
    """(best, median) µs per call of each function, timed in interleaved batches.

    Interleaving makes the functions share whatever load the machine is under,
    so their ratio stays meaningful on a busy host; the best batch is the
    least disturbed one.
    """
    timers = [(timeit.Timer(fn), _batch_size(fn)) for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(REPEATS):
        for (timer, number), bucket in zip(timers, times, strict=True):
            bucket.append(timer.timeit(number) / number * 1e6)
    return [(min(bucket), statistics.median(bucket)) for bucket in times]


def _through(serializer: co.Serializer) -> Callable[[], object]:
    dumps, loads = serializer.dumps, serializer.loads
    return lambda: loads(dumps(RECORD))


def _bare() -> dict[str, Callable[[], object]]:
    packb, unpackb = msgpack.packb, msgpack.unpackb
    return {
        "msgpack": lambda: unpackb(packb(RECORD)),
        "json": lambda: json.loads(json.dumps(RECORD)),
        "pickle": lambda: pickle.loads(pickle.dumps(RECORD)),
    }


def _serializers() -> list[tuple[str, str, co.Serializer]]:
    """(label, bare library to compare with, serializer) for every preset and wrapper."""
    rows: list[tuple[str, str, co.Serializer]] = []
    presets: list[tuple[str, co.Serializer]] = [
        ("msgpack", co.MsgpackSerializer()),
        ("json", co.JSONSerializer()),
        ("pickle", co.PickleSerializer()),
    ]
    for library, serializer in presets:
        rows.append((library, library, serializer))
        # min_size=0 so the record is actually compressed (the default keeps it raw).
        rows.append((f"compressed({library}, min_size=0)", library, co.compressed(serializer, 0)))
        rows.append(
            (f"compressed({library}) [raw: < min_size]", library, co.compressed(serializer))
        )
        rows.append((f"signed({library})", library, co.signed(serializer, SECRET)))
        rows.append(
            (
                f"signed(compressed({library}))",
                library,
                co.signed(co.compressed(serializer), SECRET),
            )
        )
    return rows


def _hot_path_choices() -> list[tuple[str, Callable[[], object]]]:
    """The alternatives weighed for MsgpackSerializer (see presets.py)."""
    packer = msgpack.Packer(use_bin_type=True)
    data = packer.pack(RECORD)
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def str_keys_only(obj: dict[str, co.Primitive]) -> dict[str, co.Primitive]:
        "".join(obj)
        return obj

    def ext_refused(code: int, data: bytes) -> object:
        raise ValueError(code)

    return [
        ("encode: msgpack.packb (new Packer per call)", lambda: packb(RECORD)),
        ("encode: reused Packer.pack", lambda: packer.pack(RECORD)),
        ("encode: MsgpackSerializer.dumps (per-thread Packer)", lambda: co_msgpack.dumps(RECORD)),
        ("decode: msgpack.unpackb(data)", lambda: unpackb(data)),
        (
            "decode: unpackb + str-key hook, ext_hook, timestamp=2",
            lambda: unpackb(data, object_hook=str_keys_only, ext_hook=ext_refused, timestamp=2),
        ),
        ("decode: MsgpackSerializer.loads", lambda: co_msgpack.loads(data)),
    ]


co_msgpack = co.MsgpackSerializer()


def main() -> None:
    """Print the table: serializer, µs per encode+decode, bare library, ratio."""
    bare = _bare()
    print(f"record: {RECORD}")
    print(f"µs per encode+decode, best (median) of {REPEATS} interleaved batches\n")
    header = f"{'serializer':44} {'cacheorm µs':>16} {'bare library µs':>22} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for label, library, serializer in _serializers():
        (best, median), (bare_best, bare_median) = measure(_through(serializer), bare[library])
        print(
            f"{label:44} {best:7.2f} ({median:6.2f})"
            f" {library:>8} {bare_best:5.2f} ({bare_median:5.2f})"
            f" {best / bare_best:5.2f}x"
        )
    print("\nmsgpack hot-path choices (µs per call, best (median)):")
    choices = _hot_path_choices()
    for (label, _), (best, median) in zip(
        choices, measure(*(fn for _, fn in choices)), strict=True
    ):
        print(f"  {label:56} {best:6.2f} ({median:5.2f})")


if __name__ == "__main__":
    main()
