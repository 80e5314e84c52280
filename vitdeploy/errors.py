"""One exception family. The CLI turns any of these into a single line on stderr and exit code 2."""
from __future__ import annotations


class VitDeployError(Exception):
    """A problem the user can fix: bad input, a missing file, an unsupported model, a missing backend. The message is
    one line by construction: line breaks that user input (a key, a path, a --set value) carries become spaces."""

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))


class ModelError(VitDeployError):
    """Unknown model name, unsupported architecture, or a checkpoint that does not fit the architecture."""


class CheckpointError(VitDeployError):
    """A checkpoint or model dir that is missing, corrupt, or fails its integrity check."""


class RecipeError(VitDeployError):
    """A recipe that cannot be found, parsed, or validated against its schema."""


class TargetError(VitDeployError):
    """A deployment target that cannot be found, parsed, or validated against its schema."""


class DataError(VitDeployError):
    """A data spec that cannot be parsed or a dataset that cannot be read."""


class BackendError(VitDeployError):
    """An unknown backend, or one whose library is not installed here."""


class IntegrityError(CheckpointError):
    """A file of a model dir or deploy dir that is missing, truncated or changed since its sha256 manifest was written,
    or a manifest entry that names a path outside its folder."""


class OutputError(VitDeployError):
    """An output path that must not be written (it would replace or delete an input, or a folder vitdeploy did not
    write) or cannot be written (disk full, read-only, no permission)."""
