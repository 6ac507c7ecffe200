"""Errors that describe a user's mistake (bad input, missing file, wrong option).

The CLI prints these as one line, without a traceback, and exits non-zero. Code anywhere in
the package raises them when the fix is on the user's side; the message must say what was
wrong and how to fix it.

The model and processing files travel beside checkpoints as remote code and so cannot
import this module; their user-facing errors are defined there and re-exported here.
"""

from regiongpt.model.modeling_regiongpt import RegionReferenceError
from regiongpt.model.pooling import EmptyRegionError
from regiongpt.processing.processing_regiongpt import InvalidImageError
from regiongpt.processing.regions import InvalidRegionError


class RegionGPTError(Exception):
    """Base class for errors caused by user input; the message is shown to the user as-is."""


class InvalidInputError(RegionGPTError, ValueError):
    """An input file, option or value is malformed."""


# Everything the CLI reports as a one-line user error.
USER_ERRORS = (RegionGPTError, InvalidRegionError, InvalidImageError, RegionReferenceError, EmptyRegionError)

__all__ = ["EmptyRegionError", "InvalidImageError", "InvalidInputError", "InvalidRegionError", "RegionGPTError", "RegionReferenceError",
           "USER_ERRORS"]
