"""Serializers: primitives <-> bytes. Presets, the registry, protobuf and wrappers."""

from cacheorm.serializers import registry as registry
