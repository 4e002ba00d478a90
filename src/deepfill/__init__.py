"""DeepFill v1: generative image inpainting with contextual attention (Yu et al., CVPR 2018)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepfill")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
