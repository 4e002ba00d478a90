"""DeepFill v1 networks: contextual attention, the two-stage generator and the WGAN critics."""

from .contextual_attention import CPU_CHUNK_BYTES_REUSED, ContextualAttention, set_cpu_chunk_bytes
from .critics import GlobalCritic, LocalCritic
from .flow import flow_to_image
from .generator import CoarseGenerator, InpaintGenerator, RefineGenerator, composite, inpaint_padded

__all__ = [
    "CPU_CHUNK_BYTES_REUSED",
    "CoarseGenerator",
    "ContextualAttention",
    "GlobalCritic",
    "InpaintGenerator",
    "LocalCritic",
    "RefineGenerator",
    "composite",
    "flow_to_image",
    "inpaint_padded",
    "set_cpu_chunk_bytes",
]
