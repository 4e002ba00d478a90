"""DeepFill networks: contextual attention, the two-stage generator (v1, and v2 with gated
convolutions), v1's WGAN critics and v2's SN-PatchGAN critic."""

from .contextual_attention import CPU_CHUNK_BYTES_REUSED, ContextualAttention, set_cpu_chunk_bytes
from .critics import GlobalCritic, LocalCritic
from .flow import flow_to_image
from .generator import CoarseGenerator, InpaintGenerator, RefineGenerator, composite, inpaint_padded
from .sn_patchgan import SNPatchGANCritic

__all__ = [
    "CPU_CHUNK_BYTES_REUSED",
    "CoarseGenerator",
    "ContextualAttention",
    "GlobalCritic",
    "InpaintGenerator",
    "LocalCritic",
    "RefineGenerator",
    "SNPatchGANCritic",
    "composite",
    "flow_to_image",
    "inpaint_padded",
    "set_cpu_chunk_bytes",
]
