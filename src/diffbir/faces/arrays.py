"""Converters between the face tools' numpy images and the models' tensors.

The face tools (detection, alignment, paste-back) are OpenCV geometry and work
on numpy arrays: HWC, float32, RGB, [0, 1]. The restoration models take NCHW
float tensors, RGB, [0, 1]. These two functions cross that boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

__all__ = ["image_to_tensor", "tensor_to_image"]


def image_to_tensor(
    image: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """HWC numpy image -> 1xCxHxW tensor on ``device`` (float32 unless ``dtype``)."""
    import torch

    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"expected an HWC image, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
    return tensor.to(device=device, dtype=dtype or torch.float32)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """CxHxW or 1xCxHxW tensor -> HWC float32 numpy image (on the CPU)."""
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise ValueError(f"expected a CHW or 1CHW tensor, got shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu").float().numpy().transpose(1, 2, 0).copy()
