"""Features plug into the orchestrator here, one module each.

A feature module defines ``Feature``, a class built with the orchestrator (``Feature(orch)``)
that may provide:

- ``layer_config() -> dict[str, str]``: entries of TETHER_LAYER_CONFIG, the table the C
  layer decides with, without a round trip (keys and values must not contain ``;`` or
  ``=``; the C side reads them with ``tl_config_value``);
- ``layer_handlers() -> dict[str, Handler]``: requests from layer sessions it answers;
- ``async start()`` / ``async stop()``: run after the agent is up / when the session ends;
- ``async watch() -> str``: optional; returning ends the session with that reason.

Modules are found by name in this package, so adding a feature touches no shared file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def feature_classes() -> list[type[Any]]:
    classes = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        cls = getattr(module, "Feature", None)
        if cls is not None:
            classes.append(cls)
    return classes
