"""Errors that describe a user's mistake (bad input, missing file, wrong option).

The CLI prints these as one line, without a traceback, and exits non-zero. Code anywhere in
the package raises them when the fix is on the user's side; the message must say what was
wrong and how to fix it.
"""


class RegionGPTError(Exception):
    """Base class for errors caused by user input; the message is shown to the user as-is."""


class InvalidRegionError(RegionGPTError, ValueError):
    """A region (box, mask, polygon, RLE) is malformed, empty or outside the image."""


class InvalidInputError(RegionGPTError, ValueError):
    """An input file, option or value is malformed."""
