"""The browser demo (``deepfill-demo``, ``make demo``): paint a hole, see DeepFill fill it.

Upload an image or pick one of the embedded sample photos, paint the hole with the brush (or
generate one of the mask presets with a seed), choose the weights, and see the input with its
hole, the coarse and refined stages, the result and where contextual attention copied from.
The inpainting is :func:`deepfill.inference.inpaint_array`, what ``deepfill-inpaint`` runs.

The page is a Gradio app (``pip install deepfill[demo]``; ``make install`` includes it). Requests
run one at a time (a queue), so two users never share a half-finished model call.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfill.data import masks as mask_presets
from deepfill.data.image_files import IMAGE_EXTENSIONS, load_image
from deepfill.inference import Inpainting, inpaint_array, load_generator
from deepfill.utils.errors import UnreadableImageError, UserError
from deepfill.utils.files import atomic_path

__all__ = [
    "HOLE_PRESETS",
    "Demo",
    "WeightsOption",
    "build_app",
    "editor_input",
    "find_weights",
    "preset_hole",
    "read_upload",
]

# The suite's mask generators, by the names the page shows.
HOLE_PRESETS: dict[str, Callable[..., torch.Tensor]] = {
    "box": mask_presets.rectangle,
    "free-form": mask_presets.free_form,
    "thin": mask_presets.thin,
    "medium": mask_presets.medium,
    "thick": mask_presets.thick,
}
MIN_SIDE = 16
NO_WEIGHTS = (
    "No weights found under {roots}: train a model with `make train` (it writes "
    "outputs/quickstart/runs/<run>/checkpoints/last.ckpt), or convert a released model with "
    "`deepfill-convert <official checkpoint folder> weights.pt`, then reload this page or type its path."
)


@dataclass(frozen=True)
class WeightsOption:
    """Weights the page offers: ``label`` is what the list shows, ``path`` what loads."""

    label: str
    path: Path


def _official_folder(folder: Path) -> bool:
    # A released TF checkpoint: a `checkpoint` index file beside its .index/.data files.
    return (folder / "checkpoint").is_file() and any(folder.glob("*.index"))


def find_weights(roots: Sequence[str | Path]) -> list[WeightsOption]:
    """Weights under ``roots``, newest first: training checkpoints (``.ckpt``, labelled with their
    run folder), converted official weights (``.pt``, ``.npz``), ONNX exports (``.onnx``, run by
    onnxruntime) and official checkpoint folders."""
    found: dict[Path, float] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in (".ckpt", ".pt", ".npz", ".onnx"):
                found[path] = path.stat().st_mtime
            elif path.is_dir() and _official_folder(path):
                found[path] = (path / "checkpoint").stat().st_mtime
    options = []
    for path, _ in sorted(found.items(), key=lambda item: (-item[1], str(item[0]))):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(found[path]))
        if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
            kind = f"training run {path.parent.parent.name}, {path.name}"
        elif path.is_dir():
            kind = f"official checkpoint {path.name}/"
        elif path.suffix == ".onnx":
            kind = f"ONNX export {path.name}"
        else:
            kind = f"converted weights {path.name}"
        options.append(WeightsOption(f"{kind} ({when}) - {path}", path))
    return options


def editor_input(value: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An image editor's value -> the image (H,W,3) uint8 and the painted hole (H,W) bool, or None
    when nothing is painted. ``value``: ``background`` (H,W,3|4) and ``layers`` (H,W,4) arrays;
    any paint (alpha > 0) on any layer is hole."""
    background = None if value is None else value.get("background")
    if background is None:
        raise UserError("no image: upload one, or pick an example")
    image = np.asarray(background)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise UserError(f"the upload is not an RGB image (array of shape {image.shape})")
    if min(image.shape[:2]) < MIN_SIDE:
        raise UserError(
            f"the image is {image.shape[1]}x{image.shape[0]}; the model needs at least {MIN_SIDE} px per side"
        )
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    hole = np.zeros(image.shape[:2], dtype=bool)
    for layer in value.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == hole.shape:
            hole |= layer[..., 3] > 0
    return image, (hole if hole.any() else None)


def read_upload(path: str | Path, name: str | None = None) -> None:
    """Check that an uploaded file is an image the project reads (as ``deepfill-inpaint`` reads
    its inputs); :class:`UserError` naming the upload (``name``, the file name the user chose)
    otherwise."""
    try:
        load_image(path)
    except UnreadableImageError:
        shown = name or Path(path).name
        raise UserError(
            f"{shown}: not an image the demo can read; upload a {', '.join(IMAGE_EXTENSIONS)} file"
        ) from None


def refused(message: str) -> Exception:
    """A refused request: one line for the user (Gradio's error box, no traceback printed)
    and one line in the server's console."""
    import gradio as gr

    print(f"deepfill-demo: refused request: {message}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False)


def preset_hole(name: str, seed: int, height: int, width: int) -> np.ndarray:
    """A hole of the preset ``name`` (:data:`HOLE_PRESETS`) drawn with ``seed``: (H,W) bool."""
    if name not in HOLE_PRESETS:
        raise UserError(f"unknown mask preset {name!r}; choose from {', '.join(HOLE_PRESETS)}")
    mask = HOLE_PRESETS[name](height, width, np.random.default_rng(int(seed)))
    return mask[0].numpy() > 0.5


def _fit(
    image: np.ndarray, hole: np.ndarray, max_side: int, downscale: bool
) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image, hole
    if not downscale:
        raise UserError(
            f"the image is {width}x{height}, above this demo's limit of {max_side} px per side; "
            "tick 'downscale large images' (or start the demo with a larger max_side)"
        )
    scale = max_side / max(height, width)
    size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    small_hole = np.asarray(Image.fromarray(hole).resize(size, Image.Resampling.NEAREST))
    return small, small_hole


def _with_hole(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    shown = image.copy()
    shown[hole] = (255, 255, 255)
    return shown


class Demo:
    """What the page does, without the page: weights discovery, a cache of loaded generators
    and the inpainting of one request.

    Args:
        roots: folders searched for weights (``outputs/`` by default).
        weights: weights to offer first (any format :func:`load_generator` reads), or None.
        device: ``"auto"`` (a CUDA GPU when present), ``"cpu"`` or ``"cuda"``.
        max_side: larger images are refused, or downscaled when the user asks.
        precision: ``"fp32"`` or ``"bf16"`` (see :mod:`deepfill.inference`).
        cpu_chunk_bytes: the contextual attention's CPU chunk budget (None: its default).
    """

    def __init__(
        self,
        roots: Sequence[str | Path] = ("outputs",),
        weights: str | Path | None = None,
        device: str = "auto",
        max_side: int = 1024,
        precision: str = "fp32",
        cpu_chunk_bytes: int | None = None,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.roots = [Path(r) for r in roots]
        self.weights = None if weights is None else Path(weights)
        self.device = device
        self.max_side = int(max_side)
        self.precision = precision
        self.cpu_chunk_bytes = cpu_chunk_bytes
        self._generators: dict[Path, torch.nn.Module] = {}
        self._lock = threading.Lock()

    def options(self) -> list[WeightsOption]:
        """The weights to offer: the ones given at start, then what the roots hold."""
        found = find_weights(self.roots)
        if self.weights is not None:
            found = [WeightsOption(f"given at start - {self.weights}", self.weights)] + [
                o for o in found if o.path.resolve() != self.weights.resolve()
            ]
        return found

    def no_weights_message(self) -> str:
        return NO_WEIGHTS.format(roots=", ".join(str(r) for r in self.roots))

    def resolve(self, choice: str | None) -> Path:
        """A list label or a typed path -> the weights path."""
        if not choice:
            options = self.options()
            if not options:
                raise UserError(self.no_weights_message())
            return options[0].path
        for option in self.options():
            if choice == option.label:
                return option.path
        path = Path(choice.strip()).expanduser()
        if not path.exists():
            raise UserError(f"weights: no such file or folder: {path}")
        return path

    def generator(self, path: Path) -> torch.nn.Module:
        """The generator of ``path``, loaded once and kept."""
        key = path.resolve()
        if key not in self._generators:
            self._generators[key] = load_generator(path, self.device, self.cpu_chunk_bytes)
        return self._generators[key]

    def inpaint(
        self,
        editor: dict | None,
        weights: str | None = None,
        hole_source: str = "painted",
        preset: str = "box",
        seed: int = 0,
        downscale: bool = False,
    ) -> tuple[Inpainting, np.ndarray, np.ndarray]:
        """One request: returns the inpainting, the image it ran on and its hole.

        ``hole_source``: ``"painted"`` (the editor's brush strokes) or ``"preset"`` (``preset``
        drawn with ``seed``)."""
        image, painted = editor_input(editor)
        if hole_source == "preset":
            hole = preset_hole(preset, seed, *image.shape[:2])
        elif painted is None:
            raise UserError("no hole: paint over the part to fill (the brush), or choose a mask preset")
        else:
            hole = painted
        image, hole = _fit(image, hole, self.max_side, downscale)
        if not hole.any():
            raise UserError("the hole vanished when the image was downscaled; paint a larger one")
        path = self.resolve(weights)
        with self._lock:  # one model call at a time, also outside Gradio's queue
            result = inpaint_array(self.generator(path), image, hole, self.precision)
        return result, image, hole

    def save_result(self, result: Inpainting, folder: Path) -> Path:
        """The result as a PNG file (what the page offers to download)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"deepfill_{time.strftime('%Y%m%d_%H%M%S')}_{time.monotonic_ns() % 10**6}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(result.completed).save(tmp, format="PNG")
        return path


def _examples(folder: Path) -> list[str]:
    """The embedded sample photos, written once as files the page can show as examples."""
    from deepfill.data.datasets import SAMPLE_SPLITS, _sample_photo

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (*SAMPLE_SPLITS["val"], "astronaut", "chelsea"):
        path = folder / f"{name}.png"
        if not path.is_file():
            photo = _sample_photo(name)
            scale = 512 / max(photo.shape[:2])
            if scale < 1:
                size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
                photo = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
            with atomic_path(path) as tmp:
                Image.fromarray(photo).save(tmp, format="PNG")
        paths.append(str(path))
    return paths


def _read_uploads_first(editor) -> None:
    """Make Gradio's image editor ``editor`` read each upload through the project first, so that
    a file that is not an image is refused in one line (:func:`read_upload`), not in Gradio's
    internal words. On the instance: a subclass of a Gradio component would make Gradio write a
    type stub beside this module."""
    from gradio.data_classes import FileData

    convert = editor.convert_and_format_image

    def checked(file, flatten_on_white: bool = False):
        if isinstance(file, FileData):
            try:
                read_upload(file.path, file.orig_name)
            except UserError as error:
                raise refused(str(error)) from None
        return convert(file, flatten_on_white)

    editor.convert_and_format_image = checked


def build_app(demo: Demo, files: str | Path):
    """The Gradio page for ``demo``; ``files``: a folder for the example photos and results."""
    import gradio as gr

    files = Path(files)
    options = demo.options()
    labels = [o.label for o in options]
    with gr.Blocks(title="DeepFill v1 demo") as app:
        gr.Markdown(
            "# DeepFill v1: generative inpainting with contextual attention\n"
            "Upload an image (or pick an example below), paint over what should go with the brush, "
            "press **Inpaint**. Or let a mask preset draw the hole."
        )
        notice = gr.Markdown("" if options else f"**{demo.no_weights_message()}**")
        with gr.Row():
            with gr.Column(scale=3):
                editor = gr.ImageEditor(
                    label="image; paint the hole",
                    type="numpy",
                    image_mode="RGBA",
                    sources=["upload", "clipboard"],
                    brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=24),
                    elem_id="editor",
                )
                _read_uploads_first(editor)
                gr.Examples(examples=_examples(files / "examples"), inputs=[editor], label="sample photos")
            with gr.Column(scale=2):
                weights = gr.Dropdown(
                    choices=labels,
                    value=labels[0] if labels else None,
                    allow_custom_value=True,
                    label="weights (newest first; or type a path)",
                    elem_id="weights",
                )
                hole_source = gr.Radio(["painted", "preset"], value="painted", label="hole")
                with gr.Row():
                    preset = gr.Dropdown(list(HOLE_PRESETS), value="box", label="mask preset")
                    seed = gr.Number(value=0, precision=0, label="seed")
                downscale = gr.Checkbox(value=False, label=f"downscale large images (> {demo.max_side} px)")
                run = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                info = gr.Markdown(elem_id="info")
                download = gr.File(label="result (PNG)", elem_id="download")

        def picture(label: str, elem_id: str):
            # PNG, not Gradio's default WebP: the result's known pixels stay exact.
            return gr.Image(label=label, type="numpy", format="png", interactive=False, elem_id=elem_id)

        with gr.Row():
            shown = picture("input with the hole", "input_with_hole")
            coarse = picture("coarse stage", "coarse")
            refined = picture("refined stage", "refined")
        with gr.Row():
            completed = picture("result", "result")
            flow = picture("attention flow (where the hole copied from)", "flow")

        def respond(editor_value, weights_choice, source, preset_name, seed_value, scale_down):
            try:
                result, image, hole = demo.inpaint(
                    editor_value, weights_choice, source, preset_name, int(seed_value or 0), bool(scale_down)
                )
            except UserError as error:
                raise refused(str(error)) from None
            text = (
                f"{image.shape[1]}x{image.shape[0]} px, hole {hole.mean():.1%} of the image; "
                f"DeepFill {result.family}, {result.seconds:.2f} s on {result.device}"
            )
            return (
                _with_hole(image, hole),
                result.coarse,
                result.refined,
                result.completed,
                result.flow,
                text,
                str(demo.save_result(result, files / "results")),
            )

        run.click(
            respond,
            inputs=[editor, weights, hole_source, preset, seed, downscale],
            outputs=[shown, coarse, refined, completed, flow, info, download],
            api_name="inpaint",
        )
        del notice
    # One request at a time: the model and its device are shared.
    app.queue(default_concurrency_limit=1)
    return app
