"""Load an App for the command line from ``path/to/file.py[:attr]``.

The file is imported as a module under a unique name (never ``__main__``, so a file's
``if __name__ == "__main__":`` block does not run), with its directory on ``sys.path`` so it
can import its siblings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

from ._cli_view import CliError
from .app import App

_counter = itertools.count(1)


def split_ref(ref: str) -> tuple[str, str | None]:
    """``"dir/app.py:pipeline"`` -> ``("dir/app.py", "pipeline")``; a Windows drive colon is kept."""
    path, sep, attr = ref.rpartition(":")
    if not sep or not attr or not path or "/" in attr or "\\" in attr or attr.endswith(".py"):
        return ref, None
    return path, attr


def import_file(path: Path) -> ModuleType:
    digest = hashlib.blake2b(str(path).encode(), digest_size=4).hexdigest()
    name = f"roost_app_{path.stem.replace('-', '_').replace('.', '_')}_{digest}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module  # pydantic resolves a model's annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _module_apps(ref: str) -> tuple[str, App | None, dict[str, App]]:
    """Import the file of ``ref``: its path as given, the App its ``attr`` names (None without
    one), and the Apps among its globals (by global name; at least one)."""
    file, attr = split_ref(ref)
    path = Path(file).expanduser()
    if not path.is_file():
        raise CliError(f"app file {file!r} not found" if not path.exists() else f"{file!r} is not a file")
    module = import_file(path.resolve())
    if attr is not None:
        if not hasattr(module, attr):
            raise CliError(f"{file} has no attribute {attr!r}")
        found = getattr(module, attr)
        if not isinstance(found, App):
            raise CliError(f"{file}:{attr} is not a roost.App (it is of type {type(found).__name__})")
        return file, found, {attr: found}
    apps = {name: value for name, value in vars(module).items() if isinstance(value, App)}
    if not apps:
        raise CliError(f"{file} defines no roost.App at module level; build one there or name it with {file}:ATTR")
    return file, None, apps


def load_apps(ref: str) -> list[App]:
    """Every App ``ref`` names: the one of ``file.py:attr``, else each App among the file's globals
    (once, however many globals refer to it). Two different Apps with one name are an error: a
    runtime knows apps by name."""
    file, named, apps = _module_apps(ref)
    if named is not None:
        return [named]
    unique = list({id(app): app for app in apps.values()}.values())
    names = [app.name for app in unique]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise CliError(f"{file} builds several roost.App instances named {', '.join(map(repr, twice))}; "
                       f"give them distinct names or choose one with {file}:ATTR")
    return unique


def load_app(ref: str, *, prefer_name: str | None = None) -> App:
    """The App named by ``ref`` ("file.py" or "file.py:attr").

    Without ``attr`` the file must hold one App among its globals; when it holds several, the one
    whose name is ``prefer_name`` is taken, else the global called ``app``.
    """
    file, named, apps = _module_apps(ref)
    if named is not None:
        return named
    if len(apps) == 1:
        return next(iter(apps.values()))
    if prefer_name is not None:
        matching = [value for value in apps.values() if value.name == prefer_name]
        if len(matching) == 1:
            return matching[0]
    if "app" in apps:
        return apps["app"]
    raise CliError(
        f"{file} defines several roost.App instances ({', '.join(sorted(apps))}); choose one with {file}:ATTR"
    )
