"""``co.cached``: a loader function made a read-through of a repo, with its own signature.

::

    @co.cached(people, negative_ttl=30)
    def person(name: str) -> Person | None:  # e.g. a database query
        return db.find_person(name)

    person("Sam")             # co.get_or_load(people, "Sam", <the loader>, negative_ttl=30)
    person.invalidate("Sam")  # co.delete(people, "Sam"): the record, or its remembered absence

The decorated function is a :class:`Cached`: type checkers see the loader's
own parameters (a ``ParamSpec``) and the repo's record type as its result. It
is not a declared plan (it takes the loader's argument, not a repo), so it has
no op; ``cacheorm.aio.cached`` is its twin for coroutine loaders, sharing
:class:`ReadThrough` and :func:`key_and_loader`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Generic, ParamSpec, cast

from cacheorm import crud
from cacheorm.repo import K, R, Repo

__all__ = ["Cached", "ReadThrough", "cached", "key_and_loader"]

P = ParamSpec("P")


class ReadThrough(Generic[R, K]):
    """A repo and ``get_or_load``'s options, checked once, when the decorator is made."""

    def __init__(
        self, repo: Repo[R, K], lock_ttl: int, wait: float, negative_ttl: int | None
    ) -> None:
        crud._check_lock_settings(lock_ttl, wait)
        crud._check_negative_ttl(negative_ttl)
        self.repo = repo
        self.lock_ttl = lock_ttl
        self.wait = wait
        self.negative_ttl = negative_ttl

    @property
    def options(self) -> dict[str, object]:
        """The keyword options of ``get_or_load``."""
        return {"lock_ttl": self.lock_ttl, "wait": self.wait, "negative_ttl": self.negative_ttl}


def key_and_loader(
    loader: Callable[..., object], args: tuple[object, ...], kwargs: Mapping[str, object]
) -> tuple[object, Callable[[object], object]]:
    """The key of a call of a decorated loader, and the loader as ``get_or_load`` calls it.

    The key is the call's one argument, given by position or by name.

    Raises:
        TypeError: the call has not exactly one argument.
    """
    if len(args) == 1 and not kwargs:
        return args[0], loader
    if not args and len(kwargs) == 1:
        ((name, key),) = kwargs.items()

        def by_name(value: object) -> object:
            return loader(**{name: value})

        by_name.__qualname__ = getattr(loader, "__qualname__", repr(loader))
        return key, by_name
    raise TypeError(
        f"{getattr(loader, '__qualname__', loader)!s} takes the key as its one argument "
        f"(by position or by name), got {len(args)} positional and {len(kwargs)} keyword"
    )


class Cached(Generic[P, R, K]):
    """A loader made a read-through by :func:`cached`; call it as the loader.

    A call is ``get_or_load(repo, key, loader, ...)``: the stored record, or
    the loader's, stored for the next call; concurrent callers across threads
    and processes load a key once. A loader returning ``None`` raises
    :class:`~cacheorm.NotFound` (remembered for ``negative_ttl`` seconds if set).
    """

    __name__: str  # the loader's, as functools.update_wrapper copies them
    __wrapped__: Callable[P, R | None]

    def __init__(self, through: ReadThrough[R, K], loader: Callable[P, R | None]) -> None:
        functools.update_wrapper(self, loader)
        self.through = through
        self.loader = loader

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key, load = key_and_loader(self.loader, args, kwargs)
        through = self.through
        return crud.get_or_load(
            through.repo,
            cast("K", key),  # the loader's argument: the repo checks it when it encodes it
            cast("Callable[[K], R | None]", load),  # self.loader, called with that argument
            lock_ttl=through.lock_ttl,
            wait=through.wait,
            negative_ttl=through.negative_ttl,
        )

    def invalidate(self, key: K) -> bool:
        """Delete the record of ``key``, or its remembered absence; return whether one was there.

        Raises:
            BackendError: the server is unreachable, in either ``on_backend_error`` mode.
        """
        return crud.delete(self.through.repo, key)

    def __repr__(self) -> str:
        name = getattr(self.loader, "__qualname__", self.loader)
        return f"<cached {name!s} of {self.through.repo!r}>"


class CachedDecorator(Generic[R, K]):
    """What :func:`cached` returns: apply it to a loader."""

    def __init__(self, through: ReadThrough[R, K]) -> None:
        self.through = through

    def __call__(self, loader: Callable[P, R | None], /) -> Cached[P, R, K]:
        return Cached(self.through, loader)


def cached(
    repo: Repo[R, K],
    /,
    *,
    lock_ttl: int = 10,
    wait: float = 10.0,
    negative_ttl: int | None = None,
) -> CachedDecorator[R, K]:
    """A decorator making a loader ``(key) -> R | None`` a read-through of ``repo``.

    The decorated function takes the loader's parameters (type checkers see
    them) and returns the repo's record: the stored one, or the loader's,
    stored (see :func:`cacheorm.get_or_load`, whose options these are; one
    caller loads a key however many ask at once). ``.invalidate(key)`` deletes
    the stored record or remembered absence.

    Example:
        >>> import cacheorm as co
        >>> from cacheorm.demo import PERSON, Person
        >>> people = co.Repo(PERSON)
        >>> @co.cached(people)
        ... def person(name: str) -> Person:
        ...     return Person(name, 1.8)
        >>> person("Sam")
        Person(name='Sam', height=1.8, married=False, email=None)
        >>> person.invalidate("Sam")
        True

    Raises:
        ValidationError: an illegal ``lock_ttl``, ``wait`` or ``negative_ttl``
            (when the decorator is made).
    """
    return CachedDecorator(ReadThrough(repo, lock_ttl, wait, negative_ttl))
