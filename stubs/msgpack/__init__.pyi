# Stubs for the subset of msgpack that cacheorm calls (checked by mypy.stubtest).
from collections.abc import Callable
from typing import Any

from msgpack.exceptions import BufferFull as BufferFull
from msgpack.exceptions import ExtraData as ExtraData
from msgpack.exceptions import FormatError as FormatError
from msgpack.exceptions import OutOfData as OutOfData
from msgpack.exceptions import StackError as StackError
from msgpack.exceptions import UnpackException as UnpackException
from typing_extensions import disjoint_base

version: tuple[int, int, int]
__version__: str

@disjoint_base
class Packer:
    def __init__(
        self,
        *,
        default: Callable[[Any], Any] | None = None,
        use_single_float: bool = False,
        autoreset: bool = True,
        use_bin_type: bool = True,
        strict_types: bool = False,
        datetime: bool = False,
        unicode_errors: str | None = None,
        buf_size: int = 256 * 1024,
    ) -> None: ...
    def pack(self, obj: object) -> bytes: ...
    def reset(self) -> None: ...
    def bytes(self) -> bytes: ...

def packb(o: object, **kwargs: Any) -> bytes: ...
def unpackb(
    packed: bytes,
    *,
    object_hook: Callable[[dict[Any, Any]], Any] | None = None,
    list_hook: Callable[[list[Any]], Any] | None = None,
    use_list: bool = True,
    raw: bool = False,
    timestamp: int = 0,
    strict_map_key: bool = True,
    unicode_errors: str | None = None,
    object_pairs_hook: Callable[[list[tuple[Any, Any]]], Any] | None = None,
    ext_hook: Callable[[int, bytes], Any] = ...,
    max_str_len: int = -1,
    max_bin_len: int = -1,
    max_array_len: int = -1,
    max_map_len: int = -1,
    max_ext_len: int = -1,
) -> Any: ...

loads = unpackb
dumps = packb
