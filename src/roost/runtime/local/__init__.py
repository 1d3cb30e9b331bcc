"""The embedded runtime: asyncio in this process, a SQLite journal on disk."""

from ._journal import SCHEMA_VERSION, Journal
from ._runtime import DEFAULT_PATH, LocalRuntime

__all__ = ["DEFAULT_PATH", "SCHEMA_VERSION", "Journal", "LocalRuntime"]
