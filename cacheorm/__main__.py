"""``python -m cacheorm``: the command line of :mod:`cacheorm.cli`."""

from cacheorm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
