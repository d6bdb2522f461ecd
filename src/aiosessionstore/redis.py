"""The Redis backend: ``from aiosessionstore.redis import RedisBackend``.

Needs redis-py: ``pip install 'aiosessionstore[redis]'``.
"""

from __future__ import annotations

try:
    from ._redis import RedisBackend
except ModuleNotFoundError as exc:  # pragma: no cover - the tests run with redis-py
    if exc.name is None or exc.name.split(".")[0] != "redis":
        raise
    raise ImportError(
        "the Redis backend needs redis-py: pip install 'aiosessionstore[redis]'"
    ) from exc

__all__ = ("RedisBackend",)
