"""The package's public face: exactly the documented names, typed."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import aiosessionstore


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ and the module's public attributes are the same set (a public submodule,
    such as aiosessionstore.redis once imported, is not one of them)."""
    public = {
        name
        for name, value in vars(aiosessionstore).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert set(aiosessionstore.__all__) == public - {"annotations"}


def test_every_error_is_a_session_store_error() -> None:
    """One base class catches every failure of the store."""
    for name in aiosessionstore.__all__:
        value = getattr(aiosessionstore, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, aiosessionstore.SessionStoreError)


def test_the_package_is_typed() -> None:
    """py.typed ships, so mypy checks users' calls against our annotations."""
    assert (Path(aiosessionstore.__file__).parent / "py.typed").is_file()
