"""Thin command-line commands over the library (``regiongpt --help``)."""
