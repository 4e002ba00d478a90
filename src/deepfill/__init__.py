"""DeepFill v1 (generative image inpainting with contextual attention, Yu et al., CVPR 2018) and
v2 (free-form image inpainting with gated convolution, Yu et al., ICCV 2019).

The public names below are imported on first use (PEP 562), so that ``import deepfill`` (which
every command's module runs first) costs nothing: a command that only has to say that a file is
missing answers before PyTorch is loaded.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("deepfill")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# public name -> the module that defines it
_EXPORTS = {
    "ContextualAttention": "deepfill.models",
    "GlobalCritic": "deepfill.models",
    "InpaintGenerator": "deepfill.models",
    "LocalCritic": "deepfill.models",
    "SNPatchGANCritic": "deepfill.models",
    "flow_to_image": "deepfill.models",
    "load_official": "deepfill.official.convert",
    "load_official_v1": "deepfill.official.convert",
    "load_official_v2": "deepfill.official.convert",
}

__all__ = [
    "ContextualAttention",
    "GlobalCritic",
    "InpaintGenerator",
    "LocalCritic",
    "SNPatchGANCritic",
    "__version__",
    "flow_to_image",
    "load_official",
    "load_official_v1",
    "load_official_v2",
]

if TYPE_CHECKING:
    from deepfill.models import (
        ContextualAttention,
        GlobalCritic,
        InpaintGenerator,
        LocalCritic,
        SNPatchGANCritic,
        flow_to_image,
    )
    from deepfill.official.convert import load_official, load_official_v1, load_official_v2


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deepfill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
