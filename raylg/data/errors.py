"""The one error type of raylg.data."""


class DataError(ValueError):
    """Bad or missing data; the message names the file, field or value and how to fix it."""
