"""Object ids taken from URLs, forms and queries: ASCII digits within the database's range.

`str.isdigit()` is true for '³' and '١٢', which `int()` then refuses or reads as another
number; an id past 64 bits overflows the database driver. Both were server errors.
"""

MAX_ID = 2**63 - 1


def id_parse(value: object) -> int | None:
    """The id written in `value`, or None when it is not one (not ASCII digits, or too big)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= MAX_ID else None
    text = str(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    number = int(text)
    return number if number <= MAX_ID else None
