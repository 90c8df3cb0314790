"""`runner`, the package's old import name, kept for a transition as the very same modules.

The folder `runner/` is installed as `lmflow_runner` (docs/api.md says why). Code and tests
that still say `import runner.x` or `python -m runner` get `lmflow_runner.x` itself, not a
second copy: two copies would hold two sets of classes, so an error raised by one would not
be caught as the other's. `runner/__init__.py` calls `install` when it is imported under the
old name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import CodeType, ModuleType

IMPORT_NAME = "lmflow_runner"


class OldNameFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `old.x` as the already imported (or now imported) `lmflow_runner.x`."""

    def __init__(self, old: str) -> None:
        self.old = old

    def _new_name(self, fullname: str) -> str | None:
        if not fullname.startswith(self.old + "."):
            return None
        return IMPORT_NAME + fullname[len(self.old) :]

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        new_name = self._new_name(fullname)
        if new_name is None:
            return None
        real = importlib.util.find_spec(new_name)
        if real is None:
            return None
        is_package = real.submodule_search_locations is not None
        return ModuleSpec(fullname, self, is_package=is_package, loader_state=new_name)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(spec.loader_state)
        spec.loader_state = module.__spec__  # put back in exec_module: the import replaces it
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # type: ignore[union-attr]

    def get_code(self, fullname: str) -> CodeType | None:
        """For `python -m runner`: runpy runs the code of `lmflow_runner.__main__`."""
        new_name = self._new_name(fullname)
        real = importlib.util.find_spec(new_name) if new_name else None
        if new_name is None or real is None:
            return None
        if not isinstance(real.loader, importlib.abc.InspectLoader):
            return None
        return real.loader.get_code(new_name)


def install(old: str) -> None:
    """Make `old` and every `old.x` the same module objects as `lmflow_runner[.x]`."""
    sys.modules[old] = importlib.import_module(IMPORT_NAME)
    if not any(isinstance(f, OldNameFinder) and f.old == old for f in sys.meta_path):
        sys.meta_path.insert(0, OldNameFinder(old))
