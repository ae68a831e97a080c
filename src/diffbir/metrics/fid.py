"""FID, the Fréchet Inception Distance (Heusel et al., NeurIPS 2017), between a set of
restored images and a set of references, as pyiqa's ``fid`` computes it by default
(clean-fid's "clean" mode, Parmar et al., CVPR 2022).

1. Each image on the 0..255 scale, each channel resized to 299x299 by Pillow's
   bicubic filter in 32-bit float mode, clipped to 0..255, mapped to [-1, 1] by
   ``(v - 128) / 128``.
2. The 2048 features of FID's InceptionV3 (:mod:`diffbir.metrics.inception`).
3. Per set, the mean ``mu`` and the covariance ``C`` (``n - 1`` in the denominator)
   of the features; ``FID = |mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr sqrt(C1 C2)``, in
   float64.

``tr sqrt(C1 C2)`` is computed without a general matrix square root (pyiqa uses
scipy's ``sqrtm``): with ``C1 = A^T A`` and ``C2 = B^T B`` (``A``, ``B`` the centred
features over ``sqrt(n - 1)``), the eigenvalues of ``C1 C2`` are the squared singular
values of ``A B^T``, so the trace is the sum of those singular values (an
``n1 x n2`` problem, exact for the small sets where ``C`` is far from full rank);
for sets larger than the feature size it is the sum of the square roots of the
eigenvalues of the symmetric ``C1^(1/2) C2 C1^(1/2)``.

FID is a property of two sets, not of an image: ``diffbir eval`` reports one value
for the run (the table's ``set`` row), and needs at least two images on each side.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from diffbir.errors import DiffBIRError
from diffbir.metrics.inception import load_fid_inception

SIZE = 299
MIN_IMAGES = 2


def clean_resize(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, 299, 299]`` float32 inputs of the network from images ``x`` in [0, 1]."""
    levels = x.detach().double().cpu().mul(255.0)
    rounded = levels.round()
    if torch.allclose(levels, rounded, atol=1e-3):
        levels = rounded  # 8-bit content: exactly the levels Pillow reads
    out = []
    for image in levels.float().numpy():
        planes = [
            np.asarray(Image.fromarray(c, "F").resize((SIZE, SIZE), Image.BICUBIC)) for c in image
        ]
        out.append(np.stack(planes).clip(0, 255))
    return (torch.from_numpy(np.stack(out)) - 128) / 128


def inception_features(network, x: torch.Tensor) -> np.ndarray:
    """``[N, 2048]`` float64 features of images ``x`` (in [0, 1]) from FID's network."""
    device = next(network.parameters()).device
    with torch.inference_mode():
        out = network(clean_resize(x).to(device))
    return out.double().cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between the feature sets ``a`` ``[n1, d]`` and ``b`` ``[n2, d]`` (see the notes)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < MIN_IMAGES or len(b) < MIN_IMAGES:
        raise DiffBIRError(
            f"FID needs at least {MIN_IMAGES} images on each side "
            f"(got {len(a)} restored, {len(b)} reference)"
        )
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca = (a - mu_a) / np.sqrt(len(a) - 1)
    cb = (b - mu_b) / np.sqrt(len(b) - 1)
    d = a.shape[1]
    if len(a) * len(b) <= d * d:
        trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    else:
        c1, c2 = ca.T @ ca, cb.T @ cb
        w, v = np.linalg.eigh(c1)
        root = (v * np.sqrt(w.clip(min=0))) @ v.T
        trace_sqrt = np.sqrt(np.linalg.eigvalsh(root @ c2 @ root).clip(min=0)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2 * trace_sqrt)


class FIDSets:
    """Collects the features of the restored and the reference images; :meth:`value`
    is the FID between them."""

    def __init__(self, network) -> None:
        self.network = network
        self.features: dict[str, list[np.ndarray]] = {"restored": [], "reference": []}

    def _features(self, x: torch.Tensor) -> np.ndarray:
        return inception_features(self.network, x)

    def add(self, restored: torch.Tensor | None, reference: torch.Tensor | None) -> None:
        """Add images (``[N, 3, H, W]`` in [0, 1]) to either side."""
        if restored is not None:
            self.features["restored"].append(self._features(restored))
        if reference is not None:
            self.features["reference"].append(self._features(reference))

    def counts(self) -> tuple[int, int]:
        """How many restored and reference images were added."""
        return tuple(sum(len(f) for f in self.features[k]) for k in ("restored", "reference"))

    def value(self) -> float:
        """The FID of the images added so far (one-line error for fewer than 2 a side)."""
        sides = []
        for key in ("restored", "reference"):
            parts = self.features[key]
            sides.append(np.concatenate(parts) if parts else np.zeros((0, 2048)))
        return frechet_distance(*sides)


def build(name: str, options, device: torch.device, *files) -> FIDSets:
    """The set metric ``fid`` from pytorch-fid's InceptionV3 file."""
    del name, options
    return FIDSets(load_fid_inception(*files).to(device))
