class MemoryBackend:  # placeholder
    pass


SimpleBackend = MemoryBackend
