"""cacheorm: a typed, functional cache ORM.

Typed records (``NamedTuple``, ``TypedDict``, frozen dataclasses) stored in
Redis, Memcached, process memory or files, read back as the same types::

    import cacheorm as co

    class Person(NamedTuple):
        name: str
        height: float

    people = co.Repo(co.Schema(Person, key="name"))
    co.insert(people, Person("Sam", 178.8))
    co.get(people, "Sam")

This module only re-exports the public surface; see ``__all__``. The record
functions are declared once each, in :mod:`cacheorm.crud`.
"""

from cacheorm import aio as aio
from cacheorm import crud as crud
from cacheorm import ops as ops
from cacheorm.backends.afilesystem import AsyncFileSystemBackend as AsyncFileSystemBackend
from cacheorm.backends.amemcached import AsyncMemcachedBackend as AsyncMemcachedBackend
from cacheorm.backends.aredis import AsyncRedisBackend as AsyncRedisBackend
from cacheorm.backends.atiered import AsyncTieredBackend as AsyncTieredBackend
from cacheorm.backends.base import KEEP_TTL as KEEP_TTL
from cacheorm.backends.base import AsyncBackend as AsyncBackend
from cacheorm.backends.base import Backend as Backend
from cacheorm.backends.filesystem import FileSystemBackend as FileSystemBackend
from cacheorm.backends.memcached import MemcachedBackend as MemcachedBackend
from cacheorm.backends.memory import MemoryBackend as MemoryBackend
from cacheorm.backends.memory import SimpleBackend as SimpleBackend
from cacheorm.backends.redis import RedisBackend as RedisBackend
from cacheorm.backends.tiered import TieredBackend as TieredBackend
from cacheorm.crud import *  # noqa: F403  # the public functions, as crud.__all__ names them
from cacheorm.errors import AlreadyExists as AlreadyExists
from cacheorm.errors import BackendError as BackendError
from cacheorm.errors import CacheORMError as CacheORMError
from cacheorm.errors import ConflictError as ConflictError
from cacheorm.errors import DecodeError as DecodeError
from cacheorm.errors import FieldLoadError as FieldLoadError
from cacheorm.errors import FieldValidationError as FieldValidationError
from cacheorm.errors import NotFound as NotFound
from cacheorm.errors import SchemaError as SchemaError
from cacheorm.errors import ValidationError as ValidationError
from cacheorm.errors import ValueTooLarge as ValueTooLarge
from cacheorm.fields import AutoField as AutoField
from cacheorm.fields import BinaryField as BinaryField
from cacheorm.fields import BooleanField as BooleanField
from cacheorm.fields import DateField as DateField
from cacheorm.fields import DateTimeField as DateTimeField
from cacheorm.fields import DecimalField as DecimalField
from cacheorm.fields import EnumField as EnumField
from cacheorm.fields import Field as Field
from cacheorm.fields import FloatField as FloatField
from cacheorm.fields import IntegerField as IntegerField
from cacheorm.fields import JSONField as JSONField
from cacheorm.fields import ListField as ListField
from cacheorm.fields import StringField as StringField
from cacheorm.fields import StructField as StructField
from cacheorm.fields import TimeField as TimeField
from cacheorm.fields import TimestampField as TimestampField
from cacheorm.fields import UUIDField as UUIDField
from cacheorm.ops import execute as execute
from cacheorm.readthrough import cached as cached
from cacheorm.repo import Repo as Repo
from cacheorm.repo import on as on
from cacheorm.schema import Schema as Schema
from cacheorm.serializers import registry as registry
from cacheorm.serializers.base import Primitive as Primitive
from cacheorm.serializers.base import Serializer as Serializer
from cacheorm.serializers.presets import JSONSerializer as JSONSerializer
from cacheorm.serializers.presets import MsgpackSerializer as MsgpackSerializer
from cacheorm.serializers.presets import PickleSerializer as PickleSerializer
from cacheorm.serializers.protobuf import ProtobufSerializer as ProtobufSerializer
from cacheorm.serializers.wrappers import compressed as compressed
from cacheorm.serializers.wrappers import signed as signed
from cacheorm.stats import Stats as Stats
from cacheorm.stats import instrument as instrument
from cacheorm.urls import async_backend_from_url as async_backend_from_url
from cacheorm.urls import backend_from_url as backend_from_url

__version__ = "0.1.0"

__all__ = [
    "KEEP_TTL",
    "AlreadyExists",
    "AsyncMemcachedBackend",
    "AsyncBackend",
    "AsyncFileSystemBackend",
    "AsyncRedisBackend",
    "AsyncTieredBackend",
    "AutoField",
    "Backend",
    "BackendError",
    "BinaryField",
    "BooleanField",
    "CacheORMError",
    "ConflictError",
    "DateField",
    "DateTimeField",
    "DecimalField",
    "DecodeError",
    "FieldLoadError",
    "FieldValidationError",
    "EnumField",
    "Field",
    "FileSystemBackend",
    "FloatField",
    "IntegerField",
    "JSONField",
    "JSONSerializer",
    "ListField",
    "MemcachedBackend",
    "MemoryBackend",
    "MsgpackSerializer",
    "NotFound",
    "PickleSerializer",
    "Primitive",
    "ProtobufSerializer",
    "RedisBackend",
    "Repo",
    "Schema",
    "SchemaError",
    "Serializer",
    "SimpleBackend",
    "Stats",
    "StringField",
    "StructField",
    "TieredBackend",
    "TimeField",
    "TimestampField",
    "UUIDField",
    "ValidationError",
    "ValueTooLarge",
    "cached",
    "compressed",
    "execute",
    "instrument",
    "on",
    "aio",
    "async_backend_from_url",
    "backend_from_url",
    "ops",
    "registry",
    "signed",
]
__all__ += crud.__all__  # the public functions, each declared once in cacheorm.crud
