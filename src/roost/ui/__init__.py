"""``roost ui``: a run inspector in the browser (runs list, run page, JSON API under ``/api/``).

Needs the ``ui`` extra (Starlette, Hypercorn): the rest of roost never imports this package.
"""

from __future__ import annotations

try:
    import hypercorn  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from ..errors import MissingExtraError

    raise MissingExtraError("roost ui", "ui") from exc

from ._app import RunSource, create_app, serve

__all__ = ["RunSource", "create_app", "serve"]
