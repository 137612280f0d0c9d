"""``make bench``: every benchmark table, measured against the raw libraries in the same run."""

from __future__ import annotations

from bench import aio, backends, records, serializers, speed


def main() -> None:
    serializers.main()
    backends.main()
    records.main()
    speed.main()
    aio.main()


if __name__ == "__main__":
    main()
