"""The one error type raylg.models raises: a wrong model name, input size or block index."""


class ModelError(ValueError):
    """A student or teacher cannot be built or probed as asked; the message says what is valid."""
