"""Training-time augmentation: small random rotations, shifts and (where allowed) flips.

A model trained on 80 images of a part sees the part in 80 poses; random small rotations and
shifts show it the poses in between, which is what the papers do (PaDiM's VAE baseline: ±2°
rotation and a random crop; Bergmann et al.'s AE: random crops of a slightly larger image).
Flips are *not* harmless everywhere: a flipped texture is still a nominal texture, but a flipped
washer moves its orientation notch, and a mirrored imprint on a capsule is a defect. So flips are
off by default and switched on per category.

:class:`Augment` is a small frozen dataclass, so a model can hold its settings as a plain dict
(``Augment(...).params()``), save them with ``torch.load(weights_only=True)``-safe types, and
rebuild the callable with ``Augment(**params)``. It transforms a whole batch at once, on the
batch's device, with one affine warp per image::

    augment = Augment(rotate_deg=2, shift=0.02, hflip=True)
    batch = augment(batch)                       # float[B,C,H,W] → same shape
    batch = augment(batch, generator=torch.Generator().manual_seed(0))   # reproducible

Random numbers are drawn on the CPU (from ``generator``, else torch's global generator, which
:func:`adlearn.training.train` seeds from (seed, epoch)), so a seed gives the same augmented
batch on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import AdlearnError
from .settings import Settings

__all__ = ["Augment"]


@dataclass(frozen=True)
class Augment(Settings):
    """Random affine warp of each image of a batch: rotation, translation, optional flips.

    Args:
        rotate_deg: rotation angle drawn uniformly in [−rotate_deg, +rotate_deg] degrees.
        shift: translation drawn uniformly in [−shift, +shift] × the image side, per axis.
        hflip: mirror left–right with probability ½ (only where a mirrored image is nominal).
        vflip: mirror top–bottom with probability ½ (idem).

    Pixels that the warp brings in from outside the image are mirrored from inside it, so no
    black borders appear that the model would have to learn as "nominal".
    """

    argument: ClassVar[str] = "augment"
    rotate_deg: float = 0.0
    shift: float = 0.0
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rotate_deg <= 180:
            raise AdlearnError(f"rotate_deg must lie in [0, 180] degrees, got {self.rotate_deg}")
        if not 0 <= self.shift < 0.5:
            raise AdlearnError(f"shift is a fraction of the image side in [0, 0.5), got {self.shift}")
        for flag in ("hflip", "vflip"):
            if not isinstance(getattr(self, flag), bool):
                raise AdlearnError(f"{flag} must be True or False, got {getattr(self, flag)!r}")

    @property
    def is_identity(self) -> bool:
        return self.rotate_deg == 0 and self.shift == 0 and not (self.hflip or self.vflip)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Warp every image of ``float[B,C,H,W]`` by its own random transform; same shape out."""
        if images.ndim != 4:
            raise AdlearnError(f"Augment expects a batch [B,C,H,W], got shape {tuple(images.shape)}")
        if self.is_identity:
            return images
        theta = self.sample_transforms(len(images), generator).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def sample_transforms(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random affine matrices ``[n, 2, 3]`` in the normalised coordinates of ``affine_grid``."""
        u = torch.rand(n, 5, generator=generator)
        angle = (2 * u[:, 0] - 1) * math.radians(self.rotate_deg)
        # affine_grid's coordinates span [-1, 1], i.e. 2 units per image side
        tx, ty = (2 * u[:, 1] - 1) * 2 * self.shift, (2 * u[:, 2] - 1) * 2 * self.shift
        sx = torch.where((u[:, 3] < 0.5) & self.hflip, -1.0, 1.0)
        sy = torch.where((u[:, 4] < 0.5) & self.vflip, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        return torch.stack(
            [torch.stack([cos * sx, -sin * sy, tx], dim=1), torch.stack([sin * sx, cos * sy, ty], dim=1)],
            dim=1,
        )
