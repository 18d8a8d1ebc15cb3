"""The one exception type for errors a user can cause; the UI shows its message."""


class ExplorerError(Exception):
    """A problem with user input, a model or a bundle, with a message that says what to do."""
