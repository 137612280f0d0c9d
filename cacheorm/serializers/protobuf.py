class ProtobufSerializer:  # placeholder
    pass
