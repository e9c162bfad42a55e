"""Turning stored images (arrays in [0, 1], uint8 arrays or PIL images) into `pixel_values`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def to_chw(image: Any) -> torch.Tensor:
    """One image as a float tensor C x H x W in [0, 1].

    Float arrays are taken to be in [0, 1] already (neuroflow's readers scale them); integer
    arrays and PIL images are divided by 255; alpha channels are dropped.
    """
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL, without importing it
        image = image.convert("RGB" if image.mode not in ("L", "1", "I;16", "F") else "L")
    arr = np.asarray(image)
    scale = 255.0 if arr.dtype.kind in "ui" else 1.0
    t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32) / scale
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
        t = t.permute(2, 0, 1)
    if t.ndim != 3:
        raise ValueError(f"an image must be H x W or H x W x C, got shape {tuple(arr.shape)}")
    return t[:3] if t.shape[0] == 4 else t


class ImageTransform:
    """Resize, match channels, normalize: a batch of images -> `pixel_values` (N x C x H x W).

    With `processor` (a Hugging Face image processor) the images are handed to it as RGB uint8
    instead, so a pre-trained vision backbone gets exactly its own preprocessing.

    Args:
        image_size: side of the square output (bilinear, antialiased); None keeps the input size.
        num_channels: output channels (1: grayscale, 3: RGB; gray inputs are repeated, RGB inputs
            converted to luminance).
        mean: per-channel mean subtracted after scaling to [0, 1] (one value or `num_channels`).
        std: per-channel standard deviation divided by.
        processor: an image processor (e.g. `AutoImageProcessor.from_pretrained(...)`).
    """

    def __init__(
        self,
        image_size: int | None = 32,
        num_channels: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        processor: Any = None,
    ) -> None:
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
        for label, values in (("image_mean", mean), ("image_std", std)):
            if len(values) not in (1, num_channels):
                raise ValueError(f"{label} needs 1 or {num_channels} values, got {list(values)}")
        if min(std) <= 0:
            raise ValueError(f"image_std must be positive, got {list(std)}")
        self.image_size, self.num_channels, self.processor = image_size, num_channels, processor
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.num_channels:
            return x
        if x.shape[1] == 1:
            return x.expand(-1, self.num_channels, -1, -1)
        return (x * _LUMA).sum(dim=1, keepdim=True)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size is None or tuple(x.shape[-2:]) == (self.image_size, self.image_size):
            return x
        return F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False, antialias=True)

    def __call__(self, images: Sequence[Any] | np.ndarray) -> torch.Tensor:
        if isinstance(images, np.ndarray) and images.dtype.kind == "f" and images.ndim == 3:
            tensors = [torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)]
        else:
            tensors = [to_chw(img).unsqueeze(0) for img in images]
        if self.processor is not None:
            rgb = [(img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                   for t in tensors for img in self._to_rgb(t)]
            return self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        # Resize one by one only when sizes differ (hub datasets); stored arrays share one size.
        same = len({tuple(t.shape[-2:]) for t in tensors}) == 1
        if not same and self.image_size is None:
            sizes = sorted({tuple(t.shape[-2:]) for t in tensors})
            raise ValueError(f"images of different sizes {sizes[:4]} in one batch: set image_size")
        x = torch.cat(tensors) if same else torch.cat([self._resize(self._channels(t)) for t in tensors])
        x = self._resize(self._channels(x)).clamp(0.0, 1.0)
        return ((x - self.mean) / self.std).contiguous()

    @staticmethod
    def _to_rgb(t: torch.Tensor) -> torch.Tensor:
        return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t
