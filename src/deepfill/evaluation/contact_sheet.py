"""The contact sheet of an evaluation: DeepFill's worst and best completions by one metric, each
row the input with its hole, every method's completion and the original: the picture to look at
before the numbers.

:class:`ContactSheet` keeps only the ``count`` worst and best images seen so far (a heap each), so
an evaluation of any size holds 2 x ``count`` rows of pictures.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from deepfill.utils.files import atomic_path
from deepfill.utils.images import to_uint8

__all__ = ["ContactSheet"]


class ContactSheet:
    """Collects the rows of the sheet during an evaluation.

    Args:
        metric: the per-image metric that ranks DeepFill's completions (``lpips``, else ``psnr``).
        higher_is_better: its direction.
        count: rows of each kind (worst, best).
        ranked: the method whose completions are ranked (the others are shown beside it).
    ``offer(index, score, image, mask, completed)`` per image: ``image`` (3,H,W) in [-1,1], ``mask``
    (1,H,W), 1 = hole, ``completed`` the methods' composited outputs, by name.
    """

    def __init__(self, metric: str, higher_is_better: bool, count: int = 4, ranked: str = "deepfill") -> None:
        self.metric, self.count, self.ranked = metric, count, ranked
        self._sign = 1.0 if higher_is_better else -1.0
        # (goodness, index, pictures): the smallest goodness first in `_best`'s heap, the largest
        # first in `_worst`'s (negated), so each pops the one it would drop.
        self._best: list[tuple[float, int, list[np.ndarray]]] = []
        self._worst: list[tuple[float, int, list[np.ndarray]]] = []
        self.methods: list[str] = []

    def offer(
        self,
        index: int,
        score: float,
        image: torch.Tensor,
        mask: torch.Tensor,
        completed: dict[str, torch.Tensor],
    ) -> None:
        goodness = self._sign * float(score)
        if not np.isfinite(goodness):
            return
        kept_best = len(self._best) < self.count or goodness > self._best[0][0]
        kept_worst = len(self._worst) < self.count or -goodness > self._worst[0][0]
        if not (kept_best or kept_worst):
            return
        self.methods = list(completed)
        holed = image * (1 - mask) + mask  # the hole shown white
        pictures = [to_uint8(holed), *(to_uint8(c) for c in completed.values()), to_uint8(image)]
        if kept_best:
            heapq.heappush(self._best, (goodness, index, pictures))
            if len(self._best) > self.count:
                heapq.heappop(self._best)
        if kept_worst:
            heapq.heappush(self._worst, (-goodness, index, pictures))
            if len(self._worst) > self.count:
                heapq.heappop(self._worst)

    def _rows(self) -> list[tuple[str, float, int, list[np.ndarray]]]:
        worst = sorted(self._worst, key=lambda item: -item[0])  # the worst first
        best = sorted(self._best, key=lambda item: item[0])  # the best last
        return [("worst", self._sign * -g, i, p) for g, i, p in worst] + [
            ("best", self._sign * g, i, p) for g, i, p in best
        ]

    def shown(self) -> list[tuple[str, int, float]]:
        """The rows the sheet shows, top to bottom: (``"worst"`` or ``"best"``, image index, score)."""
        return [(kind, index, score) for kind, score, index, _ in self._rows()]

    def write(self, path: Path, title: str = "") -> Path | None:
        """The sheet as a PNG: the worst rows first (worst at the top), then the best (best at the
        bottom), each labelled with its image index and score. None when nothing was offered."""
        if not self._best:
            return None
        rows = self._rows()
        height, width = rows[0][3][0].shape[:2]
        label_w, header_h, gap = 150, 22, 4
        columns = ["input", *self.methods, "original"]
        sheet = Image.new(
            "RGB",
            (label_w + len(columns) * (width + gap), header_h * 2 + len(rows) * (height + gap)),
            "white",
        )
        draw = ImageDraw.Draw(sheet)
        draw.text((4, 4), title or f"{self.ranked}: worst and best by {self.metric}", fill="black")
        for c, name in enumerate(columns):
            draw.text((label_w + c * (width + gap) + 4, header_h + 4), name, fill="black")
        for r, (kind, score, index, pictures) in enumerate(rows):
            top = header_h * 2 + r * (height + gap)
            draw.text((4, top + 4), f"{kind}: image {index}", fill="black")
            draw.text((4, top + 20), f"{self.metric} {score:.4g}", fill="black")
            for c, picture in enumerate(pictures):
                if picture.shape[:2] != (height, width):  # images of other sizes: fitted to the cell
                    picture = np.asarray(Image.fromarray(picture).resize((width, height)))
                sheet.paste(Image.fromarray(picture), (label_w + c * (width + gap), top))
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="PNG")
        return path
