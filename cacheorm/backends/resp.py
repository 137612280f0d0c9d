"""Redis's wire protocol (RESP2, and the RESP3 types our commands can meet), sans I/O.

The asyncio Redis backend speaks RESP itself on connections that redis-py
opened (redis-py does the connect, TLS, ``AUTH``, ``HELLO`` and ``SELECT``):
redis-py's own per-command layers (packing, locks, timeouts, parser,
events) cost several times cacheorm's whole call. This module packs
commands and parses replies; errors become the exception instances
redis-py's parser makes (``parse_error``), so the plans of
:class:`~cacheorm.backends.redis.RedisCore` see the replies they always saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

ParseError: TypeAlias = Callable[[str], Exception]
"""redis-py's ``BaseParser.parse_error``: an error line's text -> its exception instance."""


class ProtocolError(Exception):
    """The server sent something that is not RESP: the connection is out of step."""


class Incomplete(Exception):  # control flow, not an error
    """A reply is not all in the buffer yet; ``need`` is the buffer length that may hold it."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


def _arg(value: object) -> bytes:
    """One argument as redis-py encodes it: bytes as is, str as UTF-8, numbers as text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"cannot send a {type(value).__name__} to Redis")


def pack(commands: Iterable[tuple[object, ...]]) -> bytes:
    """The commands as one write, each an array of bulk strings.

    >>> pack([("GET", b"k"), ("INCRBY", b"n", 5)])
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n*3\\r\\n$6\\r\\nINCRBY\\r\\n$1\\r\\nn\\r\\n$1\\r\\n5\\r\\n'
    """
    out: list[bytes] = []
    add = out.append
    for args in commands:
        if len(args) == 2:  # GET, DEL, EXISTS... of a key: one format (a batch's many)
            name, key = args
            if type(key) is bytes and type(name) is str and len(key) < _COPIED:
                head = _NAMES.get(name)
                if head is not None:
                    add(b"*2\r\n%b$%d\r\n%b\r\n" % (head, len(key), key))
                    continue
        add(b"*%d\r\n" % len(args))
        for arg in args:
            if type(arg) is str:  # a command's name: encoded once
                head = _NAMES.get(arg)
                if head is None:
                    data = arg.encode()
                    head = b"$%d\r\n%b\r\n" % (len(data), data)
                    if len(_NAMES) < 256:
                        _NAMES[arg] = head
                add(head)
                continue
            if type(arg) is bytes:
                data = arg
            elif type(arg) is int:  # a TTL, a delta: not bool, which _arg takes
                data = b"%d" % arg
            else:
                data = _arg(arg)
            if len(data) < _COPIED:  # one format, not three pieces joined
                add(b"$%d\r\n%b\r\n" % (len(data), data))
            else:  # a large value is copied once, by the join
                add(b"$%d\r\n" % len(data))
                add(data)
                add(b"\r\n")
    return b"".join(out)


_COPIED: Final = 4096
"""Arguments shorter than this are framed in one format (a copy); longer ones are not."""


_NAMES: dict[str, bytes] = {}
"""Command names (and other ``str`` arguments) as packed, remembered up to a bound."""


def parse(buffer: bytes, pos: int, parse_error: ParseError) -> tuple[object, int]:
    """The reply starting at ``buffer[pos]`` and the position after it.

    Bulk strings are ``bytes``, integers ``int``, simple strings ``bytes``
    (as redis-py's parsers give them without decoding), nulls ``None``,
    arrays, sets and pushes lists, maps dicts, errors the exception instance
    ``parse_error`` makes (returned, not raised).

    >>> parse(b"$2\\r\\nhi\\r\\n:7\\r\\n", 0, ValueError)
    (b'hi', 8)

    Raises:
        Incomplete: the reply does not end within ``buffer`` yet.
        ProtocolError: not RESP.
    """
    line_end = buffer.find(b"\r\n", pos)
    if line_end < 0:
        raise Incomplete(len(buffer) + 1)
    kind = buffer[pos]
    head = buffer[pos + 1 : line_end]
    after = line_end + 2
    if kind == 36:  # $ bulk string
        size = int(head)
        if size < 0:
            return None, after
        end = after + size
        if len(buffer) < end + 2:
            raise Incomplete(end + 2)
        return buffer[after:end], end + 2
    if kind == 58 or kind == 40:  # : integer, ( big number
        return int(head), after
    if kind == 43:  # + simple string
        return head, after
    if kind == 42 or kind == 126 or kind == 62:  # * array, ~ set, > push
        count = int(head)
        if count < 0:
            return None, after
        items: list[object] = []
        for _ in range(count):
            if not buffer.startswith(b"$", after):
                item, after = parse(buffer, after, parse_error)
                items.append(item)
                continue
            # A bulk string (an MGET's values), inlined: a call less per element.
            line_end = buffer.find(b"\r\n", after)
            if line_end < 0:
                raise Incomplete(len(buffer) + 1)
            size = int(buffer[after + 1 : line_end])
            after = line_end + 2
            if size < 0:
                items.append(None)
                continue
            end = after + size
            if len(buffer) < end + 2:
                raise Incomplete(end + 2)
            items.append(buffer[after:end])
            after = end + 2
        return items, after
    if kind == 45:  # - error
        return parse_error(head.decode("utf-8", errors="replace")), after
    if kind == 95:  # _ null
        return None, after
    if kind == 35:  # # boolean
        return head == b"t", after
    if kind == 44:  # , double
        return float(head), after
    if kind == 37:  # % map
        mapping: dict[object, object] = {}
        for _ in range(int(head)):
            key, after = parse(buffer, after, parse_error)
            mapping[key], after = parse(buffer, after, parse_error)
        return mapping, after
    if kind == 33 or kind == 61:  # ! blob error, = verbatim string
        end = after + int(head)
        if len(buffer) < end + 2:
            raise Incomplete(end + 2)
        blob = buffer[after:end]
        if kind == 61:
            return blob[4:], end + 2  # after its "txt:" format
        return parse_error(blob.decode("utf-8", errors="replace")), end + 2
    raise ProtocolError(f"not a Redis reply: {bytes(buffer[pos : pos + 32])!r}")


class Replies:
    """The replies to one request, parsed as their bytes arrive.

    :meth:`feed` each read from the connection; it says when the last reply is
    in. RESP3 pushes (server notices) are skipped: they answer no request.
    """

    __slots__ = ("_buffer", "_need", "got", "parse_error", "want")

    def __init__(self, want: int, parse_error: ParseError) -> None:
        self.want = want
        self.parse_error = parse_error
        self.got: list[object] = []
        """The replies parsed so far, in order."""
        self._buffer = bytearray()  # the start of a reply not all read yet
        self._need = 0  # the buffer length before that reply can end

    def awaited(self) -> int:
        """How many more bytes the reply being read needs at least (0: none begun)."""
        return self._need - len(self._buffer) if self._buffer else 0

    def feed(self, data: bytes) -> bool:
        """Parse what ``data`` completes; return whether every reply is in.

        Raises:
            ProtocolError: not RESP, or bytes beyond the last reply (the
                connection is out of step with its requests).
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return False
            data = bytes(buffer)
            buffer.clear()
        got, pos, size = self.got, 0, len(data)
        try:
            while pos < size:
                kind = data[pos]
                if kind == 36:  # $ a bulk string (a GET's value), inlined: a call less each
                    line_end = data.find(b"\r\n", pos)
                    if line_end < 0:
                        raise Incomplete(size + 1)
                    length = int(data[pos + 1 : line_end])
                    if length < 0:
                        got.append(None)
                        pos = line_end + 2
                        continue
                    end = line_end + 2 + length
                    if size < end + 2:
                        raise Incomplete(end + 2)  # pos: where this reply starts
                    got.append(data[line_end + 2 : end])
                    pos = end + 2
                elif kind == 62:  # > a push
                    _, pos = parse(data, pos, self.parse_error)
                else:
                    reply, pos = parse(data, pos, self.parse_error)
                    got.append(reply)
        except Incomplete as more:
            self._need = more.need - pos
            buffer += data[pos:]
        except ValueError as err:  # int() or float() of a malformed header
            raise ProtocolError(f"not a Redis reply: {err}") from err
        if len(got) > self.want or (len(got) == self.want and buffer):
            raise ProtocolError("more replies than requests")
        return len(got) == self.want
