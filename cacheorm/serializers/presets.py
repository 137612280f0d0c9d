class JSONSerializer:  # placeholder
    pass


class MsgpackSerializer:  # placeholder
    pass


class PickleSerializer:  # placeholder
    pass
