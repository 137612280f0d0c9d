"""Serializer wrappers: compression and HMAC signing, composable in any order.

``signed(compressed(inner), secret)`` is the order to prefer: the signature is
checked before anything is decompressed, so a forged payload costs one HMAC.

Both wrappers are :class:`~cacheorm.serializers.base.KeyedSerializer`\\ s:
cacheorm hands them the storage key of each payload. ``signed`` puts that key
into its MAC, so a payload copied under another key fails verification;
``compressed`` only passes the key on to the serializer it wraps, so both
``signed(compressed(...))`` and ``compressed(signed(...))`` bind it.

Example:
    >>> import cacheorm as co
    >>> s = co.signed(co.compressed(co.MsgpackSerializer(), min_size=64), b"k" * 32)
    >>> s.loads(s.dumps({"text": "a" * 1000})) == {"text": "a" * 1000}
    True
    >>> s.loads_keyed(s.dumps_keyed({"n": 1}, b"Person:Sam"), b"Person:Sam")
    {'n': 1}
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from cacheorm.backends.base import is_int
from cacheorm.errors import DecodeError, ValidationError
from cacheorm.serializers.base import KeyedSerializer
from cacheorm.serializers.registry import resolve

if TYPE_CHECKING:
    from cacheorm.serializers.base import Primitive, Serializer

__all__ = ["CompressedSerializer", "SignedSerializer", "compressed", "signed"]

_RAW: Final = 0
_ZLIB: Final = 1
_PADDED: Final = 2
_RAW_PREFIX: Final = bytes([_RAW])
_ZLIB_PREFIX: Final = bytes([_ZLIB])
_PADDED_PREFIX: Final = bytes([_PADDED])

DEFAULT_MIN_SIZE: Final = 1024
"""Payloads below this many bytes are stored raw: a typical record (~250 B)
shrinks by only ~20% for ~10 µs of zlib, which a cache round trip does not repay."""

DEFAULT_MAX_SIZE: Final = 64 * 1024 * 1024
"""Decompression stops with :class:`DecodeError` past this many bytes."""

DEFAULT_MAX_RATIO: Final = 16
"""A stored payload of ``n`` bytes inflates to at most ``INFLATE_FLOOR + 16 * n`` bytes.

Decoding costs memory per inflated byte (msgpack turns each byte ``0x80`` into
an empty dict of 64 bytes), so an unbounded ratio lets 16 KB planted in the
cache cost gigabytes. With 16, a compressed payload costs at most 16 times
what an uncompressed one of the same stored size can. Records compress 2-5x
(measured on msgpack and JSON of varied records), far under the cap; a
payload that compresses better (markup ~20x, one repeated character ~230x)
is padded up to the cap on write, still 16 times smaller than raw, so its
reader never refuses it."""

INFLATE_FLOOR: Final = 64 * 1024
"""Any payload may inflate to this many bytes whatever its ratio, so small
records compress as well as zlib can."""

MIN_SECRET_SIZE: Final = 16
"""The shortest HMAC secret :func:`signed` accepts, in bytes (128 bits)."""

_TAG_SIZE: Final = hashlib.sha256().digest_size
_KEY_LENGTH_SIZE: Final = 8


def _keyed(serializer: Serializer) -> KeyedSerializer | None:
    # Checked once per wrapper: isinstance on a runtime Protocol walks its members.
    return serializer if isinstance(serializer, KeyedSerializer) else None


@dataclass(frozen=True, slots=True)
class CompressedSerializer:
    """The serializer :func:`compressed` returns; see there."""

    inner: Serializer
    min_size: int = DEFAULT_MIN_SIZE
    level: int = 1
    max_size: int = DEFAULT_MAX_SIZE
    max_ratio: int = DEFAULT_MAX_RATIO
    _keyed_inner: KeyedSerializer | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in ("min_size", "max_size", "max_ratio"):
            value: object = getattr(self, name)  # checked at run time: callers may be untyped
            if not is_int(value):
                raise TypeError(f"{name} must be an int, not {value!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, not {self.min_size}")
        if self.level not in range(-1, 10):
            raise ValueError(f"level must be a zlib level from -1 to 9, not {self.level!r}")
        if self.max_size < 1:
            raise ValueError(f"max_size must be >= 1, not {self.max_size}")
        if self.max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, not {self.max_ratio}")
        object.__setattr__(self, "_keyed_inner", _keyed(self.inner))

    def _limit(self, stored: int) -> int:
        """The most bytes a stored payload of ``stored`` bytes may inflate to."""
        return min(self.max_size, INFLATE_FLOOR + self.max_ratio * stored)

    def dumps(self, obj: Primitive) -> bytes:
        """Encode with the inner serializer, then compress if large enough.

        Raises:
            ValidationError: from the inner serializer.
        """
        return self._pack(self.inner.dumps(obj))

    def dumps_keyed(self, obj: Primitive, key: bytes) -> bytes:
        """As :meth:`dumps`, passing ``key`` to a keyed inner serializer."""
        inner = self._keyed_inner
        return self._pack(self.inner.dumps(obj) if inner is None else inner.dumps_keyed(obj, key))

    def _pack(self, payload: bytes) -> bytes:
        size = len(payload)
        # Over max_size the reader would refuse to inflate it: raw is always readable.
        if self.min_size <= size <= self.max_size:
            packed = zlib.compress(payload, self.level)
            # Incompressible data (already compressed, random) is stored raw.
            if len(packed) < size:
                # The reader lets 1 + len(packed) stored bytes inflate to
                # _limit(1 + len(packed)); pad a payload that compresses better
                # than that so the reader accepts it (see DEFAULT_MAX_RATIO).
                needed = -(-(size - INFLATE_FLOOR) // self.max_ratio)  # ceil
                if 1 + len(packed) >= needed:
                    return _ZLIB_PREFIX + packed
                return _PADDED_PREFIX + packed + bytes(needed - 1 - len(packed))
        return _RAW_PREFIX + payload

    def loads(self, data: bytes) -> Primitive:
        """Decompress if marked so, then decode with the inner serializer.

        Raises:
            DecodeError: empty data, an unknown marker, corrupt, truncated or
                padded zlib data, or output over the limit (``max_size``, or
                ``max_ratio`` times the stored size, see :func:`compressed`).
        """
        return self.inner.loads(self._unpack(data))

    def loads_keyed(self, data: bytes, key: bytes) -> Primitive:
        """As :meth:`loads`, passing ``key`` to a keyed inner serializer."""
        inner = self._keyed_inner
        payload = self._unpack(data)
        return self.inner.loads(payload) if inner is None else inner.loads_keyed(payload, key)

    def _unpack(self, data: bytes) -> bytes:
        if not data:
            raise DecodeError("empty payload: no compression marker")
        marker = data[0]
        if marker == _RAW:
            return data[1:]
        if marker not in (_ZLIB, _PADDED):
            raise DecodeError(
                f"unknown compression marker {marker:#04x}: not written by compressed()"
            )
        limit = self._limit(len(data))
        inflater = zlib.decompressobj()
        try:
            # Bounded, so a small planted payload cannot inflate to gigabytes. One
            # byte over the limit: at exactly the limit zlib may stop before the
            # stream's end, which would look like an overflow.
            payload = inflater.decompress(memoryview(data)[1:], limit + 1)
        except zlib.error as err:
            raise DecodeError(f"corrupt zlib payload: {err}") from err
        if len(payload) > limit:
            raise DecodeError(
                f"compressed payload of {len(data)} bytes inflates past {limit} bytes "
                f"(max_size={self.max_size}, max_ratio={self.max_ratio}): not written by "
                "compressed() with these limits"
            )
        if not inflater.eof:
            raise DecodeError("truncated zlib payload")
        padding = inflater.unused_data
        if padding and (marker == _ZLIB or padding.count(0) != len(padding)):
            raise DecodeError("unexpected bytes after the zlib payload")
        return payload


def compressed(
    serializer: str | Serializer,
    min_size: int = DEFAULT_MIN_SIZE,
    *,
    level: int = 1,
    max_size: int = DEFAULT_MAX_SIZE,
    max_ratio: int = DEFAULT_MAX_RATIO,
) -> KeyedSerializer:
    """Wrap ``serializer`` so payloads of ``min_size`` bytes or more are zlib-compressed.

    The stored bytes start with a one-byte marker: ``0x00`` raw, ``0x01``
    zlib, ``0x02`` zlib followed by zero bytes of padding. A payload at or
    over ``min_size`` that does not shrink, or is larger than ``max_size``, is
    stored raw.

    **Bounded decoding.** Bytes read from a cache may have been planted by
    anyone who can write to it. ``loads`` inflates a stored value of ``n``
    bytes to at most ``min(max_size, 64 KiB + max_ratio * n)`` bytes and
    refuses it otherwise, so decoding costs memory proportional to what was
    stored: a decoded byte costs at most ~72 bytes of Python objects (an
    empty msgpack map), and the inner serializer's own limits (msgpack bounds
    its array, map, str and bin lengths by its input) apply to at most that
    many bytes. Measured: a 16 KB payload that inflates to 16 MB of empty
    msgpack maps used 1.2 GB and 4 s before this bound; it is now refused in
    1 ms after inflating 0.3 MB, and the worst 16 KB payload the bound admits
    (0.3 MB of empty maps) costs 20 MB and 60 ms.

    ``dumps`` honours the same bound, so a legitimate payload is never
    refused by its reader: one that compresses better than ``max_ratio`` is
    padded with zero bytes up to ``size / max_ratio`` (marker ``0x02``),
    still ``max_ratio`` times smaller than raw. Reader and writer must
    therefore use the same ``max_ratio`` and ``max_size`` (in a ``Repo`` they
    are one object).

    Why zlib, level 1: measured on a 4.9 KB msgpack payload of 20 records,
    zlib-1 gives 1195 B in 31 µs (13 µs to decompress), zstd-3 1090 B in
    22 µs (9 µs) and lz4 1780 B in 6 µs (2 µs); on 70 KB, zlib-1 0.20 of the
    input in 0.53 ms, zlib-6 0.15 in 2.2 ms, zstd-3 0.17 in 0.19 ms. zstd is
    better on both axes and lz4 much faster, but both are compiled third-party
    packages; zlib is in the standard library and decodes anywhere, and a
    cache round trip dwarfs the difference at the sizes records have. Level 1
    keeps most of level 6's saving at a quarter of its cost on large payloads;
    pass ``level=6`` (up to 9) to trade CPU for size.

    The storage key cacheorm passes (``dumps_keyed``/``loads_keyed``) goes to
    ``serializer`` if it binds keys (``signed``), so ``compressed(signed(...))``
    binds the key too.

    Args:
        serializer: The serializer producing the payload, or its registered name.
        min_size: Smallest payload, in bytes, worth compressing.
        level: zlib level, -1 to 9.
        max_size: Largest payload compressed by ``dumps`` and inflated by ``loads``.
        max_ratio: How many times its stored size a payload over 64 KiB may
            inflate to (see above); raise it only for a cache nobody else writes.

    Raises:
        TypeError: ``min_size``, ``max_size`` or ``max_ratio`` is not an int.
        ValueError: an out-of-range ``min_size``, ``level``, ``max_size`` or
            ``max_ratio``.
    """
    return CompressedSerializer(resolve(serializer), min_size, level, max_size, max_ratio)


@dataclass(frozen=True, slots=True)
class SignedSerializer:
    """The serializer :func:`signed` returns; see there."""

    inner: Serializer
    secret: bytes = field(repr=False)
    # HMAC keyed once; each call copies it, ~40% cheaper than hmac.digest() per call,
    # which re-derives the inner and outer key pads every time.
    _mac: hmac.HMAC = field(init=False, repr=False, compare=False)
    _keyed_inner: KeyedSerializer | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        secret: object = self.secret  # checked at run time: callers may be untyped
        if not isinstance(secret, bytes):
            raise ValidationError(
                f"signed() secret must be bytes, not {type(secret).__name__}; "
                "use e.g. secrets.token_bytes(32), or encode a text secret"
            )
        if len(secret) < MIN_SECRET_SIZE:
            raise ValidationError(
                f"signed() secret must be at least {MIN_SECRET_SIZE} bytes, got {len(secret)}; "
                "use e.g. secrets.token_bytes(32)"
            )
        object.__setattr__(self, "_mac", hmac.new(secret, digestmod=hashlib.sha256))
        object.__setattr__(self, "_keyed_inner", _keyed(self.inner))

    def _tag(self, key: bytes, payload: bytes) -> bytes:
        mac = self._mac.copy()  # the keyed original is never updated: thread-safe
        # The length prefix fixes where the key ends, so no (key, payload) pair
        # shares its MAC input with another: b"ab" + b"c" differs from b"a" + b"bc".
        mac.update(len(key).to_bytes(_KEY_LENGTH_SIZE, "big") + key)
        mac.update(payload)
        return mac.digest()

    def dumps(self, obj: Primitive) -> bytes:
        """Sign for no particular key: the same as ``dumps_keyed(obj, b"")``.

        Raises:
            ValidationError: from the inner serializer.
        """
        return self.dumps_keyed(obj, b"")

    def dumps_keyed(self, obj: Primitive, key: bytes) -> bytes:
        """Encode with the inner serializer and prepend the HMAC-SHA256 tag of key and payload.

        Raises:
            ValidationError: from the inner serializer.
        """
        inner = self._keyed_inner
        payload = self.inner.dumps(obj) if inner is None else inner.dumps_keyed(obj, key)
        return self._tag(key, payload) + payload

    def loads(self, data: bytes) -> Primitive:
        """Verify and decode bytes written by :meth:`dumps` (the empty key).

        Raises:
            DecodeError: as :meth:`loads_keyed`.
        """
        return self.loads_keyed(data, b"")

    def loads_keyed(self, data: bytes, key: bytes) -> Primitive:
        """Verify the tag, then, and only then, decode with the inner serializer.

        Raises:
            DecodeError: the payload is too short to hold a tag, or the tag
                does not match (tampered, truncated, unsigned, another
                secret, or written under another key).
        """
        if len(data) < _TAG_SIZE:
            raise DecodeError("payload too short to carry a signature: not written by signed()")
        tag, payload = data[:_TAG_SIZE], data[_TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(key, payload)):
            raise DecodeError(
                "signature mismatch: the payload was tampered with, written without this "
                "secret, or written under another key"
            )
        inner = self._keyed_inner
        return self.inner.loads(payload) if inner is None else inner.loads_keyed(payload, key)


def signed(serializer: str | Serializer, secret: bytes) -> KeyedSerializer:
    """Wrap ``serializer`` so every payload carries an HMAC-SHA256 tag.

    Stored bytes are ``tag (32 bytes) + payload``, the tag being
    ``HMAC-SHA256(secret, len(key) as 8 bytes big-endian + key + payload)``.
    cacheorm passes the storage key (namespace, schema, version and record
    key) through ``dumps_keyed``/``loads_keyed``, so a payload is only valid
    under the key it was written for: one copied under another key or
    namespace fails verification. Plain ``dumps``/``loads`` sign for the empty
    key. ``loads`` checks the tag with :func:`hmac.compare_digest` before the
    payload reaches the inner ``loads``, so a tampered, truncated, unsigned,
    foreign or moved payload raises :class:`~cacheorm.DecodeError` and is never
    deserialised. This is what makes :class:`~cacheorm.PickleSerializer`
    usable on a cache others can write to. A writer can still put back an
    older value that was once valid under the same key (a replay); the tag
    cannot tell versions apart.

    Args:
        serializer: The serializer producing the payload, or its registered name.
        secret: The HMAC key, at least 16 bytes; keep it out of the cache.

    Raises:
        ValidationError: ``secret`` is not ``bytes`` or is shorter than 16
            bytes (a :class:`ValueError` too).
    """
    return SignedSerializer(resolve(serializer), secret)
