def compressed() -> None:  # placeholder
    pass


def signed() -> None:  # placeholder
    pass
