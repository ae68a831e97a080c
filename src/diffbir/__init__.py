"""diffbir: blind image restoration with a generative diffusion prior.

The public API is imported lazily so that ``import diffbir`` stays cheap
(the CLI's ``--help`` must not pay for importing torch and diffusers).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "DiffBIRError": "diffbir.errors",
    "load_state_dict": "diffbir.weights.checkpoint",
    "load_cleaner": "diffbir.models.cleaner",
    "apply_cleaner": "diffbir.models.cleaner",
    "load_stage2": "diffbir.models.stage2",
    "Stage2Model": "diffbir.models.stage2",
    "DiffBIRPipeline": "diffbir.restore.pipeline",
    "RestoreOptions": "diffbir.config.settings",
    "RunConfig": "diffbir.config.settings",
    "resolve_settings": "diffbir.config.settings",
    "RestoreResult": "diffbir.restore.base",
    "Restorer": "diffbir.restore.base",
    "load_restorer": "diffbir.restore.factory",
    "resolve_run": "diffbir.restore.factory",
    "WholePhotoPipeline": "diffbir.restore.whole_photo",
    "get_preset": "diffbir.config.presets",
    "read_image": "diffbir.imaging.io",
    "write_image": "diffbir.imaging.io",
    "wavelet_color_fix": "diffbir.imaging.color",
    "resolve_weights": "diffbir.weights.registry",
    "load_degradation": "diffbir.degradation.pipelines",
}

# public names whose defining module calls them differently
_ALIASES = {
    "resolve_weights": "resolve",
    "load_degradation": "load_pipeline",
    "resolve_settings": "resolve",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'diffbir' has no attribute {name!r}")
    return getattr(importlib.import_module(module), _ALIASES.get(name, name))


def __dir__() -> list[str]:
    return __all__
