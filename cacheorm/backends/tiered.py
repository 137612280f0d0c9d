class TieredBackend:  # placeholder
    pass
