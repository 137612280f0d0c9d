class Repo:  # placeholder
    pass


def on() -> None:
    pass
