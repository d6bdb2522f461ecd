"""The version, in one place: the package metadata and ``--version`` both read it."""

__version__ = "0.2.0.dev0"
