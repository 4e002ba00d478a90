"""The released DeepFill v1 models: reading TF checkpoints without TensorFlow, converting them to
this project's modules (``deepfill-convert``)."""

from deepfill.official.convert import (
    critic_variable_names,
    load_official_critics,
    load_official_v1,
    official_critic_state_dict,
    official_state_dict,
    tf_variable_names,
)

__all__ = [
    "critic_variable_names",
    "load_official_critics",
    "load_official_v1",
    "official_critic_state_dict",
    "official_state_dict",
    "tf_variable_names",
]
