"""The config resolvers of sweeps: ``${device_count:pool}`` (the GPUs a ``launcher=local_gpus``
sweep shares out) and ``${replicate_seeds:replicates,seed}`` (the seeds of a replicated
multirun). Registered by the commands (:func:`deepfill.cli.launch.register_command_resolvers`)."""

from __future__ import annotations

from deepfill.utils.errors import ConfigError

__all__ = ["SWEEP_RESOLVERS", "device_count", "replicate_seeds"]


def device_count(pool=None) -> int:
    """Devices a ``launcher=local_gpus`` sweep shares out: ``len(pool)``, or the visible GPUs."""
    from deepfill.sweeps.devices import visible_gpus

    count = len(pool) if pool is not None else len(visible_gpus())
    if count < 1:
        raise ValueError(
            "launcher=local_gpus: no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi); "
            "set job_devices.pool=[0,1,...] or use launcher=basic"
        )
    return count


def replicate_seeds(replicates, seed) -> str:
    """The seeds of a multirun's replicates, as a sweep value: ``3, 42`` -> ``"42,43,44"``."""
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ConfigError(f"replicates: must be a whole number >= 1, got {replicates!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: must be a whole number, got {seed!r}")
    return ",".join(str(seed + i) for i in range(replicates))


SWEEP_RESOLVERS = {"device_count": device_count, "replicate_seeds": replicate_seeds}
