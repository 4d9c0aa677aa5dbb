"""The runtime's user-facing error: a misuse of a model, with a message that says what to do."""


class ModelError(Exception):
    """A misuse of the model with a message for the user (bad data shape, no match, ...)."""
