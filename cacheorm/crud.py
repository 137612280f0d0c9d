# placeholder


def add() -> None:
    pass


def delete() -> None:
    pass


def delete_many() -> None:
    pass


def exists() -> None:
    pass


def get() -> None:
    pass


def get_many() -> None:
    pass


def get_or_load() -> None:
    pass


def get_or_none() -> None:
    pass


def insert() -> None:
    pass


def insert_many() -> None:
    pass


def modify() -> None:
    pass


def replace() -> None:
    pass


def update() -> None:
    pass


def update_many() -> None:
    pass
