"""The released DeepFill v1 models: reading TF checkpoints without TensorFlow, converting them to
this project's modules (``deepfill-convert``)."""

from deepfill.official.convert import *  # noqa: F403  (the converter's public names)
from deepfill.official.convert import __all__  # noqa: F401
