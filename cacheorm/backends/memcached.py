class MemcachedBackend:  # placeholder
    pass
