# placeholder


class Field:
    pass


class AutoField:
    pass


class BinaryField:
    pass


class BooleanField:
    pass


class DateField:
    pass


class DateTimeField:
    pass


class DecimalField:
    pass


class EnumField:
    pass


class FloatField:
    pass


class IntegerField:
    pass


class JSONField:
    pass


class ListField:
    pass


class StringField:
    pass


class StructField:
    pass


class TimeField:
    pass


class TimestampField:
    pass


class UUIDField:
    pass
