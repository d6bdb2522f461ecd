"""Where the session lives: an explicit path, URL or backend; ``$<APP>_SESSION_URL``;
``$<APP>_HOME``; or ``~/.<app>``."""

from __future__ import annotations

import os
from pathlib import Path

from ._backend import Backend
from ._file import FileBackend

__all__ = ("SESSION_FILE_NAME", "resolve_backend", "resolve_path", "url_variable")

SESSION_FILE_NAME = "session.json"


def resolve_backend(
    path: str | os.PathLike[str] | None,
    url: str | None,
    backend: Backend | None,
    app_name: str,
    lock_timeout: float,
) -> Backend:
    """The backend a store was given, or the one its path, URL or environment names.

    With none given, ``$<APP>_SESSION_URL`` switches a deployed server to Redis with no
    change to its code; without it, the session is the file the TypeScript tool would use.
    """
    for name, value in (("path", path), ("url", url)):
        if value is not None and not os.fspath(value):
            raise ValueError(f"{name}= is empty: give the session's {name}, or leave it out")
    given = [name for name, value in (("path", path), ("url", url), ("backend", backend)) if value]
    if len(given) > 1:
        raise ValueError(f"give one of path=, url= and backend=, not {' and '.join(given)}")
    if backend is not None:
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must implement Backend, not be a {type(backend).__name__}")
        return backend
    variable = None
    if path is None and url is None:
        _check_app_name(app_name)
        variable = url_variable(app_name)
        url = os.environ.get(variable) or None
    if url is not None:
        from .redis import RedisBackend  # imported only when used: redis-py is optional

        try:
            return RedisBackend.from_url(url, app_name=app_name, timeout=lock_timeout)
        except ValueError as exc:
            if variable is None:
                raise
            raise ValueError(f"${variable}: {exc}") from None  # say where the URL came from
    return FileBackend(resolve_path(path, app_name), lock_timeout)


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
    return f"{_prefix(app_name)}_HOME"


def url_variable(app_name: str) -> str:
    """``octocode`` -> ``OCTOCODE_SESSION_URL``."""
    return f"{_prefix(app_name)}_SESSION_URL"


def _prefix(app_name: str) -> str:
    return app_name.upper().replace("-", "_")


def _check_app_name(app_name: str) -> None:
    if not isinstance(app_name, str):
        raise TypeError(f"app_name must be a str, not {type(app_name).__name__}")
    if not app_name or app_name in (".", "..") or any(sep in app_name for sep in "/\\"):
        raise ValueError(f"app_name must be a plain directory name, not {app_name!r}")
