"""The preset serializers: JSON, msgpack (the default) and pickle.

Each turns primitives (``dict``/``list``/``str``/``int``/``float``/``bool``/
``None``/``bytes``, nested) into bytes and back, and keeps three promises:

* **Round trip.** ``loads(dumps(x)) == x`` for every primitive, ``bytes``
  included, with the same types (``True`` stays a ``bool``, ``1.0`` a ``float``).
  A value a format cannot carry exactly is rejected by ``dumps`` with
  :class:`~cacheorm.ValidationError`, never silently changed: JSON rejects
  ``nan``/``inf`` (standard JSON has no literal for them), msgpack rejects
  integers outside the 64-bit range; msgpack and pickle carry ``nan``/``inf``
  bit for bit.
* **Determinism.** Equal input gives equal bytes. JSON sorts keys; msgpack
  and pickle keep dict insertion order, which the schema layer fixes (fields
  in declaration order), so sorting on the hot path would buy nothing.
* **One error type.** ``loads`` returns a primitive or raises
  :class:`~cacheorm.DecodeError` chained to the library's own exception.
  Foreign bytes that happen to parse (``b"42"``) come back as what they are;
  the schema layer rejects payloads of the wrong shape.

Example:
    >>> MsgpackSerializer().loads(MsgpackSerializer().dumps({"a": b"\\x00", "b": [1.5]}))
    {'a': b'\\x00', 'b': [1.5]}
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn, cast

import msgpack

from cacheorm.errors import DecodeError, ValidationError

if TYPE_CHECKING:
    from cacheorm.serializers.base import Primitive

__all__ = ["JSONSerializer", "MsgpackSerializer", "PickleSerializer"]

# Errors the libraries raise for a value they cannot encode. ``UnicodeEncodeError``
# (a lone surrogate) is a ``ValueError``; ``RecursionError`` is a pathologically
# deep (or cyclic) structure.
_ENCODE_ERRORS: Final = (TypeError, ValueError, OverflowError, RecursionError)


def _reject(name: str, err: Exception) -> NoReturn:
    raise ValidationError(f"{name} cannot encode this value: {err}") from err


def _corrupt(name: str, err: Exception) -> NoReturn:
    raise DecodeError(f"{name} could not decode the stored bytes: {err!r}") from err


# --------------------------------------------------------------------------- JSON

_BYTES_KEY: Final = "$b"
"""JSON has no bytes: ``b"..."`` travels as ``{"$b": "<base64>"}``.

To keep that injective, every dict key that starts with ``$`` is escaped by
one more ``$`` on the way out and unescaped on the way in. An escaped key thus
starts with ``$$``, so a one-key dict ``{"$b": str}`` can only be a bytes marker,
and a user's own ``{"$b": "..."}`` (stored as ``{"$$b": "..."}``) round-trips.
"""


def _json_encode(obj: object) -> object:
    """Escape ``$`` keys and replace bytes by their marker, recursively.

    Only dicts, lists and bytes are rebuilt; everything else goes to the C
    encoder untouched, which rejects what JSON cannot hold (non-str keys are
    caught here because JSON would silently turn ``1`` into ``"1"``).
    """
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if type(key) is not str:
                raise TypeError(f"dict keys must be str, not {type(key).__name__}: {key!r}")
            out["$" + key if key[:1] == "$" else key] = _json_encode(value)
        return out
    if isinstance(obj, list):
        return [_json_encode(item) for item in obj]
    if isinstance(obj, bytes):
        return {_BYTES_KEY: base64.b64encode(obj).decode("ascii")}
    return obj


def _json_object_hook(obj: dict[str, Primitive]) -> Primitive:
    """Undo :func:`_json_encode` for one decoded JSON object."""
    if len(obj) == 1 and _BYTES_KEY in obj:
        encoded = obj[_BYTES_KEY]
        if isinstance(encoded, str):
            # validate=True: a foreign "$b" holding non-base64 is corrupt, not bytes.
            return base64.b64decode(encoded, validate=True)
    for key in obj:
        if key[:2] == "$$":
            return {k[1:] if k[:2] == "$$" else k: v for k, v in obj.items()}
    return obj


def _no_constant(name: str) -> NoReturn:
    # dumps never writes NaN/Infinity, so bytes holding them are not ours.
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    # ``1e400`` parses to inf, which dumps refuses to write: not ours either.
    # Costs ~0.1 µs per float over the C default (a record with 4 floats
    # decodes in 2.0 µs instead of 1.6 µs).
    value = float(text)
    if value - value != 0.0:  # inf - inf is nan; a finite value gives 0.0
        raise ValueError(f"number {text} is out of the float range")
    return value


# Built once: ``json.dumps(obj, **options)`` builds a new encoder on every call.
_JSON_ENCODER: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_JSON_DECODER: Final = json.JSONDecoder(
    object_hook=_json_object_hook, parse_constant=_no_constant, parse_float=_finite_float
)


@dataclass(frozen=True, slots=True)
class JSONSerializer:
    """Compact, key-sorted UTF-8 JSON; bytes travel as base64 markers.

    Readable by other languages (bytes aside). ``nan``/``inf`` and integers
    too large for Python's int-to-string limit are rejected by :meth:`dumps`;
    ``loads`` refuses ``NaN``/``Infinity`` and numbers that overflow a float
    (``1e400``), which ``dumps`` never writes.
    """

    def dumps(self, obj: Primitive) -> bytes:
        """Encode ``obj`` as JSON.

        Raises:
            ValidationError: ``obj`` holds something JSON cannot carry exactly.
        """
        try:
            return _JSON_ENCODER.encode(_json_encode(obj)).encode("utf-8")
        except _ENCODE_ERRORS as err:
            _reject("JSON", err)

    def loads(self, data: bytes) -> Primitive:
        """Decode bytes written by :meth:`dumps` (or any UTF-8 JSON).

        Raises:
            DecodeError: ``data`` is not UTF-8 JSON, holds a broken bytes marker,
                or a number :meth:`dumps` would not write (``NaN``, ``1e400``).
        """
        try:
            result: Primitive = _JSON_DECODER.decode(data.decode("utf-8"))
        except Exception as err:  # the contract: only DecodeError leaves loads
            _corrupt("JSON", err)
        return result


# ------------------------------------------------------------------------ msgpack

# Packer keeps an internal buffer, so one per thread: reusing it is about twice
# as fast as ``msgpack.packb``, which builds a Packer per call (bench/serializers.py).
_PACKERS: Final = threading.local()


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer = msgpack.Packer(use_bin_type=True)
    _PACKERS.packer = packer
    return packer


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    # dumps never writes extension types; refusing them keeps loads' result a Primitive.
    raise ValueError(f"msgpack extension type {code} is not a primitive")


def _str_keys_only(obj: dict[str, Primitive]) -> dict[str, Primitive]:
    # msgpack's strict_map_key still admits bytes keys; str.join rejects any
    # non-str key in C, which is the cheapest check (see bench/serializers.py).
    "".join(obj)
    return obj


@dataclass(frozen=True, slots=True)
class MsgpackSerializer:
    """Binary msgpack, the default: compact and the fastest of the presets.

    ``str`` is packed as msgpack str and ``bytes`` as bin (``use_bin_type``), so
    both round-trip with their types. On this hot path ``dumps`` does not walk
    the input: non-primitives msgpack can pack anyway (a ``tuple``, a
    ``bytearray``, an ``int`` dict key) come back as list, bytes, or a
    :class:`DecodeError`; the ``Primitive`` type rules them out statically.
    Foreign timestamps (extension -1) decode to integer nanoseconds; other
    extension types are a :class:`DecodeError`.
    """

    def dumps(self, obj: Primitive) -> bytes:
        """Encode ``obj`` as msgpack.

        Raises:
            ValidationError: ``obj`` holds an unsupported type or an integer
                outside the signed/unsigned 64-bit range.
        """
        try:
            packer: msgpack.Packer = _PACKERS.packer
        except AttributeError:
            packer = _packer()
        try:
            # The Packer resets its buffer when pack() fails, so it stays reusable.
            return packer.pack(obj)
        except _ENCODE_ERRORS as err:
            _reject("msgpack", err)

    def loads(self, data: bytes) -> Primitive:
        """Decode one msgpack object; trailing bytes are an error.

        Raises:
            DecodeError: ``data`` is not exactly one msgpack primitive
                (chained to msgpack's ``ExtraData``, ``FormatError``, ...).
        """
        try:
            result: Primitive = msgpack.unpackb(
                data, object_hook=_str_keys_only, ext_hook=_refuse_ext, timestamp=2
            )
        except Exception as err:  # the contract: only DecodeError leaves loads
            _corrupt("msgpack", err)
        return result


# ------------------------------------------------------------------------- pickle


class _PrimitiveUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global: primitives never need one.

    This blocks the classic ``__reduce__`` code-execution payload. It does not
    make pickle safe against memory exhaustion; see :class:`PickleSerializer`.
    """

    def find_class(self, module_name: str, global_name: str, /) -> NoReturn:
        raise pickle.UnpicklingError(f"refusing to load global {module_name}.{global_name}")


_SCALARS: Final = (str, int, float, bool, bytes, type(None))


def _check_primitive(obj: object) -> None:
    """Raise ``TypeError`` unless ``obj`` is a primitive (exact builtin types)."""
    if type(obj) is dict:
        for key, value in obj.items():
            if type(key) is not str:
                raise TypeError(f"non-str dict key {key!r}")
            _check_primitive(value)
    elif type(obj) is list:
        for item in obj:
            _check_primitive(item)
    elif type(obj) not in _SCALARS:
        raise TypeError(f"{type(obj).__name__} is not a primitive")


@dataclass(frozen=True, slots=True)
class PickleSerializer:
    """Pickle protocol 5, restricted to primitives both ways. Never a default.

    Pickles of protocol 0-2 that hold ``bytes`` are refused: those encode bytes
    through a global (``_codecs.encode``).

    Warning:
        Only use pickle on a cache you fully control, or behind
        :func:`cacheorm.signed`. Loading refuses globals, which stops the
        well-known ``__reduce__`` code execution, but the format was never
        designed for untrusted input (a few bytes can ask for huge allocations).

    The pickler runs in "fast" mode (no memo) so equal values give equal bytes
    regardless of which objects are shared; cyclic structures are rejected.
    """

    def dumps(self, obj: Primitive) -> bytes:
        """Pickle ``obj``.

        Raises:
            ValidationError: ``obj`` holds a non-primitive object or a cycle.
        """
        try:
            # Tuples, sets and non-str keys pickle fine but are not primitives:
            # refuse them here rather than have loads refuse them later.
            _check_primitive(obj)
        except _ENCODE_ERRORS as err:
            _reject("pickle", err)
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=5)
        # Without the memo, identical and merely equal strings pickle the same.
        pickler.fast = True
        try:
            pickler.dump(obj)
        except _ENCODE_ERRORS as err:
            _reject("pickle", err)
        return buffer.getvalue()

    def loads(self, data: bytes) -> Primitive:
        """Unpickle primitives; any global reference is refused.

        Raises:
            DecodeError: ``data`` is not a pickle of primitives (chained to
                ``UnpicklingError``, ``EOFError``, ...).
        """
        buffer = io.BytesIO(data)
        try:
            result: object = _PrimitiveUnpickler(buffer).load()
            # pickle stops at STOP and ignores what follows; dumps never writes more.
            if buffer.tell() != len(data):
                raise pickle.UnpicklingError("trailing bytes after the pickle")
            # Without globals a pickle can still hold tuples, sets or bytearrays.
            _check_primitive(result)
        except Exception as err:  # the contract: only DecodeError leaves loads
            _corrupt("pickle", err)
        return cast("Primitive", result)  # checked by _check_primitive
