"""The one exception type users see: a one-line message naming the input and the reason."""


class VoicepipeError(Exception):
    """A user-facing error. `str(err)` is a single line that names the bad input and why."""


class ConfigError(VoicepipeError):
    """Settings or a settings file are unusable."""


class StoreError(VoicepipeError):
    """The artifact store is unreachable, refuses us, or holds a corrupted object."""


class ModelError(VoicepipeError):
    """A model cannot be found or loaded."""


class InputError(VoicepipeError):
    """A user-provided input (feed, audio file, corpus, checkpoint) is unusable."""
