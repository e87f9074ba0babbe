"""The error export raises for a model it cannot export as asked."""


class ExportError(Exception):
    """A model that cannot be exported as asked; the message says why."""
