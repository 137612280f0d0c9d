def execute() -> None:  # placeholder
    pass
