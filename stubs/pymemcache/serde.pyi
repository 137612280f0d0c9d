from typing import Protocol, type_check_only

@type_check_only
class Serde(Protocol):
    """What a client's ``serde`` must provide (pymemcache duck-types it)."""

    def serialize(self, key: bytes, value: object, /) -> tuple[bytes, int]: ...
    def deserialize(self, key: bytes, value: bytes, flags: int, /) -> object: ...
