"""Read TensorFlow checkpoints (``<prefix>.index`` + ``<prefix>.data-*``) without TensorFlow.

The V2 checkpoint format is documented: the ``.index`` file is an SSTable (LevelDB table) that
maps each tensor name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size), and the
``.data-NNNNN-of-MMMMM`` shards hold the raw little-endian tensor bytes. Reading it directly
avoids importing TensorFlow next to PyTorch (a combination that can abort the process) and the
large dependency. ``backend="tensorflow"`` reads with TensorFlow in a subprocess instead.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from deepfill.utils.errors import UserError

__all__ = ["CheckpointError", "read_tf_checkpoint", "resolve_checkpoint_prefix"]

_MAGIC = 0xDB4775248B80FB57
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}
_BFLOAT16 = 14


class CheckpointError(UserError):
    """A path that is not a readable TensorFlow checkpoint (a user's input: one line)."""


def resolve_checkpoint_prefix(path: str | os.PathLike) -> Path:
    """Turn a checkpoint folder, prefix, ``.index`` or ``.data-*`` path into the prefix.

    A folder must hold a ``checkpoint`` file (``model_checkpoint_path: "..."``) or exactly one
    ``*.index`` file.
    """
    p = Path(path)
    if p.is_dir():
        state = p / "checkpoint"
        if state.is_file():
            for line in state.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "model_checkpoint_path":
                    target = Path(value.strip().strip('"'))
                    prefix = target if target.is_absolute() else p / target
                    if Path(f"{prefix}.index").is_file():
                        return prefix
                    # The state file may hold a path from the machine that wrote it.
                    local = p / target.name
                    if Path(f"{local}.index").is_file():
                        return local
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        raise CheckpointError(
            f"{p}: not a TensorFlow checkpoint folder (expected a 'checkpoint' file or one '*.index' file, "
            f"found {len(indexes)} index files)"
        )
    name = p.name
    if name.endswith(".index"):
        p = p.with_name(name[: -len(".index")])
    elif ".data-" in name:
        p = p.with_name(name.split(".data-")[0])
    if not Path(f"{p}.index").is_file():
        raise CheckpointError(
            f"{path}: not a TensorFlow checkpoint (no '{p.name}.index' next to it; pass the folder, "
            "the prefix such as '.../snap-0', or an .npz of weights)"
        )
    return p


# ---------------------------------------------------------------------- protobuf and SSTable bits
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) of a serialized protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """Entries (key, value) of one SSTable block."""
    compression = data[offset + size]
    if compression != 0:
        raise CheckpointError(
            f"compressed SSTable block (type {compression}); read it with backend='tensorflow'"
        )
    block = data[offset : offset + size]
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 * (num_restarts + 1)
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_length]))
        pos += value_length
    return entries


def _index_entries(index_path: Path) -> list[tuple[bytes, bytes]]:
    data = index_path.read_bytes()
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise CheckpointError(f"{index_path}: not a TensorFlow checkpoint index (bad SSTable magic)")
    footer = data[-48:]
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)  # metaindex handle, unused
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries = []
    for _, handle in _block(data, index_offset, index_size):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        entries.extend(_block(data, offset, size))
    return entries


def _parse_entry(value: bytes) -> dict:
    entry = {"dtype": 1, "shape": [], "shard": 0, "offset": 0, "size": 0, "sliced": False}
    for number, _, field in _fields(value):
        if number == 1:
            entry["dtype"] = field
        elif number == 2:
            for dim_number, _, dim in _fields(field):  # TensorShapeProto
                if dim_number == 2:
                    size = next((v for n, _, v in _fields(dim) if n == 1), 0)
                    entry["shape"].append(size)
        elif number == 3:
            entry["shard"] = field
        elif number == 4:
            entry["offset"] = field
        elif number == 5:
            entry["size"] = field
        elif number == 7:
            entry["sliced"] = True
    return entry


def _read_python(prefix: Path, names: set[str] | None) -> dict[str, np.ndarray]:
    entries = _index_entries(Path(f"{prefix}.index"))
    num_shards = 1
    tensors: dict[str, np.ndarray] = {}
    handles: dict[int, object] = {}
    try:
        for raw_key, value in entries:
            if raw_key == b"":
                for number, _, field in _fields(value):  # BundleHeaderProto
                    if number == 1:
                        num_shards = field
                    elif number == 2 and field != 0:
                        raise CheckpointError(f"{prefix}: big-endian checkpoints are not supported")
                continue
            name = raw_key.decode("utf-8")
            if names is not None and name not in names:
                continue
            entry = _parse_entry(value)
            if entry["sliced"]:
                raise CheckpointError(f"{prefix}: variable {name!r} is partitioned; read it with TensorFlow")
            if entry["dtype"] == _BFLOAT16:
                dtype = np.dtype(np.uint16)
            elif entry["dtype"] in _DTYPES:
                dtype = np.dtype(_DTYPES[entry["dtype"]])
            else:
                if names is None:
                    continue  # e.g. string tensors of the optimizer state: not weights
                raise CheckpointError(f"{prefix}: variable {name!r} has unsupported dtype {entry['dtype']}")
            shard = entry["shard"]
            if shard not in handles:
                shard_path = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
                if not shard_path.is_file():
                    raise CheckpointError(f"{prefix}: missing data shard {shard_path.name}")
                handles[shard] = shard_path.open("rb")
            fh = handles[shard]
            fh.seek(entry["offset"])  # type: ignore[attr-defined]
            raw = fh.read(entry["size"])  # type: ignore[attr-defined]
            count = int(np.prod(entry["shape"], dtype=np.int64))
            if len(raw) != count * dtype.itemsize:
                raise CheckpointError(f"{prefix}: variable {name!r} is truncated in its data shard")
            array = np.frombuffer(raw, dtype=dtype).reshape(entry["shape"]).copy()
            if entry["dtype"] == _BFLOAT16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = array
    finally:
        for fh in handles.values():
            fh.close()  # type: ignore[attr-defined]
    return tensors


_TF_SCRIPT = """
import sys, numpy as np
import tensorflow as tf
reader = tf.train.load_checkpoint(sys.argv[1])
names = sys.argv[3:] or list(reader.get_variable_to_shape_map())
arrays = {}
for name in names:
    try:
        arrays[name] = np.asarray(reader.get_tensor(name))
    except Exception:
        if sys.argv[3:]:
            raise
np.savez(sys.argv[2], **{n: a for n, a in arrays.items() if a.dtype != object})
"""


def _read_tensorflow(prefix: Path, names: set[str] | None) -> dict[str, np.ndarray]:
    # A subprocess: importing TensorFlow into a process that already holds PyTorch can abort it.
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vars.npz"
        cmd = [sys.executable, "-c", _TF_SCRIPT, str(prefix), str(out), *sorted(names or [])]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise CheckpointError(f"{prefix}: TensorFlow could not read the checkpoint: {last}")
        with np.load(out) as data:
            return {name: data[name] for name in data.files}


def read_tf_checkpoint(
    path: str | os.PathLike, names: Iterable[str] | None = None, backend: str = "auto"
) -> dict[str, np.ndarray]:
    """Read variables of a TF checkpoint into NumPy arrays.

    Args:
        path: checkpoint folder, prefix (``.../snap-0``), or its ``.index`` / ``.data-*`` file.
        names: variable names to read (default: every numeric variable).
        backend: ``"python"`` (built-in reader), ``"tensorflow"`` (TF in a subprocess), or
            ``"auto"``: the built-in reader, falling back to TensorFlow when installed if the
            file uses a feature the built-in reader does not handle.
    """
    if backend not in ("auto", "python", "tensorflow"):
        raise ValueError(f"backend must be 'auto', 'python' or 'tensorflow', got {backend!r}")
    prefix = resolve_checkpoint_prefix(path)
    wanted = set(names) if names is not None else None
    if backend == "tensorflow":
        return _read_tensorflow(prefix, wanted)
    try:
        return _read_python(prefix, wanted)
    except CheckpointError:
        if backend == "python" or not _tensorflow_installed():
            raise
        return _read_tensorflow(prefix, wanted)


def _tensorflow_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None
