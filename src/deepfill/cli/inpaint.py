"""``deepfill-inpaint``: fill the holes of your own images with a trained or official generator.

    deepfill-inpaint weights=places2_v1.pt input=photo.jpg mask_path=photo_mask.png
    deepfill-inpaint weights=places2_v1.pt input=photo.jpg mask_path=photo_mask.png output=filled.png
    deepfill-inpaint weights=outputs/.../checkpoints/last.ckpt input=photos/ mask_path=masks/ output=filled/
    deepfill-inpaint weights=release_places2_256/ input=cutout.png          # holes = transparent pixels
    deepfill-inpaint weights=places2_v1.onnx input=photo.jpg mask_path=photo_mask.png  # onnxruntime

Images of any size (padded to a multiple of the model's and cropped back; known pixels are kept
exactly). Masks follow :func:`deepfill.data.masks.read_mask`: hole where the value is >= 128 of 255
(or, for a mask with transparent pixels, where its alpha is >= 128); without a mask the input's
own transparent pixels (alpha < 128) are the hole. Inputs are never overwritten, and nothing is
overwritten twice: two inputs that would give the same output name stop the run before it starts.
In folder mode an unreadable image is skipped with a warning, and the run ends with an error
naming the skipped files once the others are written.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from deepfill.cli.launch import hydra_command
from deepfill.data.image_files import IMAGE_EXTENSIONS, load_image, pair_images_with_masks
from deepfill.data.masks import mask_for_image
from deepfill.utils.checkpoints import check_weights_path
from deepfill.utils.errors import UnreadableImageError, UserError
from deepfill.utils.files import atomic_path, writable_dir
from deepfill.utils.precision import check_compile, check_precision

# PyTorch and the model are imported in run(), once the command line, the weights path and the
# inputs have been checked: a mistake there is answered in a second, not after the imports.

__all__ = ["main", "run"]


def _save(picture: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")


def _targets(cfg: DictConfig, jobs: list) -> tuple[Path, list[Path]]:
    """The output folder (checked writable) and each job's output file."""
    output = Path(cfg.output)
    single_file = len(jobs) == 1 and Path(cfg.input).is_file()
    if output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir():
        if not single_file:
            raise UserError(f"output: {output} looks like a file name; with an input folder give a folder")
        if output.suffix.lower() != ".png":
            raise UserError(
                f"output: results are PNG (lossless, known pixels stay exact); use {output.stem}.png"
            )
        writable_dir(output.parent, "output")
        return output.parent, [output]
    writable_dir(output, "output")
    return output, [output / relative for _, _, relative in jobs]


def _inpaint_one(generator, image_path, mask_path, target, cfg) -> tuple[list[Path], float]:
    """Inpaint one file; returns the written files and the generator's seconds."""
    from deepfill.inference import inpaint_array

    array = load_image(image_path)
    hole = mask_for_image(mask_path, image_path, array.shape[:2])
    result = inpaint_array(generator, array, hole, cfg.get("precision", "fp32"))
    written = [target]
    _save(result.completed, target)
    for wanted, suffix, picture in (
        (cfg.save_coarse, "_coarse", result.coarse),
        (cfg.save_flow, "_flow", result.flow),
    ):
        if wanted:
            written.append(target.with_name(target.stem + suffix + ".png"))
            _save(picture, written[-1])
    return written, result.seconds


def run(cfg: DictConfig) -> list[Path]:
    """Inpaint every image of ``cfg.input``; returns the written files."""
    check_precision(cfg.get("precision", "fp32"))
    compile_ = check_compile(cfg.get("compile", False))
    check_weights_path(cfg.weights)
    if Path(cfg.weights).suffix.lower() == ".onnx":
        if cfg.get("precision", "fp32") != "fp32":
            raise UserError(
                "precision: an .onnx model runs in the precision it was exported in; use precision=fp32 "
                "(deepfill-export precision=fp16 makes a half-precision model)"
            )
        if compile_:
            raise UserError(
                "compile: an .onnx model runs in onnxruntime, not torch.compile; use compile=false"
            )
    jobs = pair_images_with_masks(Path(cfg.input), Path(cfg.mask_path) if cfg.get("mask_path") else None)
    from deepfill.inference import load_generator
    from deepfill.utils.cpu import configure_cpu
    from deepfill.utils.devices import resolve_device

    reused = configure_cpu()
    device = resolve_device(cfg.device)
    output, targets = _targets(cfg, jobs)
    inputs = {p.resolve() for image, mask, _ in jobs for p in (image, mask) if p is not None}
    clash = [t for t in targets if t.resolve() in inputs]
    if clash:
        raise UserError(f"output: {clash[0]} would overwrite an input; choose another output folder")
    from deepfill.models import CPU_CHUNK_BYTES_REUSED

    generator = load_generator(cfg.weights, device, CPU_CHUNK_BYTES_REUSED if reused else None)
    if compile_:
        generator.compile_stages()
    written, skipped, seconds = [], [], 0.0
    from rich.progress import track

    folder_mode = len(jobs) > 1 or Path(cfg.input).is_dir()
    for (image_path, mask_path, _), target in track(
        list(zip(jobs, targets, strict=True)), description="inpainting", disable=len(jobs) < 2
    ):
        try:
            files, spent = _inpaint_one(generator, image_path, mask_path, target, cfg)
            written += files
            seconds += spent
        except (UnreadableImageError, UserError) as error:
            if not folder_mode:
                raise
            # One bad file does not stop the others; the run still ends with an error below.
            reason = str(error) if str(image_path) in str(error) else f"{image_path}: {error}"
            warnings.warn(f"skipped {reason}", RuntimeWarning, stacklevel=1)
            skipped.append(image_path)
    done = len(jobs) - len(skipped)
    print(f"wrote {done} inpainted image(s) to {output}", flush=True)
    print(f"generator time: {seconds:.2f} s on {device}", flush=True)
    if skipped:
        names = ", ".join(str(p) for p in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        raise UserError(
            f"skipped {len(skipped)} of {len(jobs)} image(s) that could not be inpainted: {names}"
        )
    return written


main = hydra_command("deepfill-inpaint", "inpaint", run)


if __name__ == "__main__":
    sys.exit(main())
