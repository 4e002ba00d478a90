"""Command-line entry points (``deepfill-train``, ``deepfill-eval``, ``deepfill-inpaint``): thin
Hydra mains over the library."""
