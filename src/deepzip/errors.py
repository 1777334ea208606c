"""The one exception hierarchy of deepzip.

Every error deepzip raises on purpose derives from :class:`DeepZipError`. Errors about user
input also derive from the matching built-in (``ValueError``, ``FileNotFoundError``) so that
generic handlers keep working. Messages name the layer, tensor or file and the bad value.
"""

from __future__ import annotations

__all__ = [
    "BloomierBuildError",
    "CheckpointError",
    "ConfigError",
    "CorruptFileError",
    "DataError",
    "DatasetNotFoundError",
    "DeepZipError",
    "DownloadError",
    "FormatError",
    "IDXFormatError",
    "InvalidTensorError",
    "UnsupportedVersionError",
]


class DeepZipError(Exception):
    """Base class of every error deepzip raises on purpose."""


class ConfigError(DeepZipError, ValueError):
    """A configuration, recipe, flag or pattern is invalid (names the key and the bad value)."""


class InvalidTensorError(DeepZipError, ValueError):
    """A tensor cannot be processed: NaN/inf values, wrong shape or dtype (names the tensor)."""


class BloomierBuildError(DeepZipError, RuntimeError):
    """A Bloomier filter could not be built: peeling failed for every seed tried."""


class CheckpointError(DeepZipError):
    """A checkpoint cannot be read or does not fit the model (missing/unexpected keys, shapes)."""


class DataError(DeepZipError):
    """A data set problem."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The data set files are not where they were looked for; the message says how to get them."""


class IDXFormatError(DataError, ValueError):
    """An IDX file is malformed: bad magic, bad dimensions, truncated or with trailing bytes."""


class DownloadError(DataError):
    """A download failed (no network, HTTP error, checksum mismatch)."""


class FormatError(DeepZipError):
    """A ``.dzip`` file cannot be read."""


class CorruptFileError(FormatError, ValueError):
    """A ``.dzip`` file is damaged or hostile: bad magic, lengths, offsets or checksums."""


class UnsupportedVersionError(FormatError):
    """A ``.dzip`` file was written by a newer, incompatible format version."""
