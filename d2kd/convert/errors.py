"""The one error type of checkpoint conversion."""


class ConversionError(ValueError):
    """A checkpoint that d2kd cannot convert, or one that does not fit the d2kd config."""
