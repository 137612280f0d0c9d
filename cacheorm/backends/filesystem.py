class FileSystemBackend:  # placeholder
    pass
