"""The degradation model: synthetic LQ images from HQ images, for training and test sets.

* :mod:`.kernels` - blur kernels (Gaussian, generalized Gaussian, plateau, sinc) as numpy;
* :mod:`.ops` - batched torch operations (blur, resize, noise, JPEG, USM sharpening);
* :mod:`.config` - YAML/TOML pipeline configurations, validated;
* :mod:`.pipelines` - :class:`~.pipelines.DegradationPipeline` and the presets
  ``codeformer``, ``codeformer_face_v1`` and ``realesrgan``.
"""
