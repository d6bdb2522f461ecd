"""Where the session file lives: an explicit path, ``$<APP>_HOME``, or ``~/.<app>``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ("SESSION_FILE_NAME", "resolve_path")

SESSION_FILE_NAME = "session.json"


def resolve_path(path: str | os.PathLike[str] | None, app_name: str) -> Path:
    """Return the absolute session file path, as the TypeScript tool would find it."""
    if path is not None:
        return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    _check_app_name(app_name)
    home = os.environ.get(home_variable(app_name))
    directory = Path(home).expanduser() if home else Path.home() / f".{app_name}"
    return Path(os.path.abspath(directory / SESSION_FILE_NAME))


def home_variable(app_name: str) -> str:
    """``octocode`` -> ``OCTOCODE_HOME``; ``my-tool`` -> ``MY_TOOL_HOME``."""
    return f"{app_name.upper().replace('-', '_')}_HOME"


def _check_app_name(app_name: str) -> None:
    if not isinstance(app_name, str):
        raise TypeError(f"app_name must be a str, not {type(app_name).__name__}")
    if not app_name or app_name in (".", "..") or any(sep in app_name for sep in "/\\"):
        raise ValueError(f"app_name must be a plain directory name, not {app_name!r}")
