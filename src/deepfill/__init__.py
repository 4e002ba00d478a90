"""DeepFill v1: generative image inpainting with contextual attention (Yu et al., CVPR 2018)."""

from importlib.metadata import PackageNotFoundError, version

from deepfill.models import ContextualAttention, GlobalCritic, InpaintGenerator, LocalCritic, flow_to_image
from deepfill.official.convert import load_official_v1

try:
    __version__ = version("deepfill")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "ContextualAttention",
    "GlobalCritic",
    "InpaintGenerator",
    "LocalCritic",
    "__version__",
    "flow_to_image",
    "load_official_v1",
]
