"""Training and evaluation data: mask generators, image sources, the Lightning data module."""
