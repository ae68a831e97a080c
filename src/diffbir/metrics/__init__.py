"""Image quality metrics for ``diffbir eval``, written in this project (Apache-2.0).

One module per metric family: :mod:`~diffbir.metrics.pixel` (PSNR, SSIM),
:mod:`~diffbir.metrics.niqe` (NIQE), :mod:`~diffbir.metrics.perceptual` (LPIPS,
DISTS, on the feature extractors of :mod:`~diffbir.metrics.backbones`),
:mod:`~diffbir.metrics.clipiqa` (CLIP-IQA on CLIP RN50), :mod:`~diffbir.metrics.fid`
(FID, a set metric, on the network of :mod:`~diffbir.metrics.inception`).
:mod:`~diffbir.metrics.names` is the table of metric names (torch-free, read by
``--help``); :mod:`~diffbir.metrics.evaluate` pairs files and runs the metrics;
:mod:`~diffbir.metrics.report` prints and writes the results.

Each value follows pyiqa's conventions (the toolbox restoration papers report
with) and is tested against values recorded from pyiqa outside this project; no
code of pyiqa (PolyForm Noncommercial) or BasicSR is in here.
"""
