"""``python -m aiosessionstore``: the command line."""

from ._cli import run

run()
