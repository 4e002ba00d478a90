"""Command-line entry points (``deepfill-train``, ``deepfill-eval``, ``deepfill-inpaint``): thin
Hydra mains over the library."""

from deepfill.cli.launch import register_command_resolvers

# Every process that runs a command (sweep workers of the joblib and submitit launchers too, which
# import the command's module) can resolve every interpolation of the configs.
register_command_resolvers()
