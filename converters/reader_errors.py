"""The checkpoint reader's refusals: every one is a `CheckpointReadError` naming the file."""


class CheckpointReadError(ValueError):
    """The file is not a readable Haiku checkpoint pickle."""


class UnsafePickleError(CheckpointReadError):
    """The pickle asks for something outside the allow-list: a global, an opcode that runs code, a BUILD."""


class CheckpointLimitError(CheckpointReadError):
    """Reading the pickle would exceed the memory budget or the nesting-depth limit."""
