"""A package's names imported on first use (PEP 562 module ``__getattr__``), as diffusers' lazy modules do."""
from __future__ import annotations

import contextlib
import importlib
from typing import Callable, ContextManager, Dict, Sequence


def lazy_exports(package: str, namespace: dict, modules: Dict[str, Sequence[str]],
                 context: Callable[[], ContextManager] = contextlib.nullcontext) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``modules`` maps a module (relative, e.g.
    ``".vae"``) to the names it exports; the first use of a name imports its module (inside
    ``context()``, e.g. to silence import-time notices) and stores the name in
    ``namespace`` (the package's ``globals()``), so later uses are plain attributes. A module may
    be a lazy package itself: only the name asked for is read from it."""
    owner = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        with context():
            namespace[name] = getattr(importlib.import_module(owner[name], package), name)
        return namespace[name]

    return __getattr__
