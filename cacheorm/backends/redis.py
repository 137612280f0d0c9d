class RedisBackend:  # placeholder
    pass
