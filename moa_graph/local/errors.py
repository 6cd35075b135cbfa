"""Why an embedded model cannot be provided."""


class LocalModelError(RuntimeError):
    """A local model file cannot be provided."""


class ModelNotInstalledError(LocalModelError):
    """A model's weights are not on this machine; the message names the command that installs
    them (``moa-graph models pull ...``)."""


class ModelChecksumError(LocalModelError):
    """A model file's SHA-256 differs from the registry's."""
