"""The degradation model: synthetic LQ images from HQ images, for training and test sets.

* :mod:`.kernels` - blur kernels (Gaussian, generalized Gaussian, plateau, sinc) as numpy;
* :mod:`.ops` - batched torch operations (blur, resize, noise, JPEG, USM sharpening);
* :mod:`.config` - YAML/TOML pipeline configurations, validated;
* :mod:`.pipelines` - :class:`~.pipelines.DegradationPipeline` and the presets
  ``codeformer``, ``codeformer_face_v1`` and ``realesrgan``;
* :mod:`.realesrgan_batch` - the release's Real-ESRGAN training degradation: kernels drawn
  per image in the data workers, the rest applied a batch at a time on the device;
* :mod:`.pool` - the training pair pool that mixes degradations across batches;
* :mod:`.torch_jpeg` - JPEG compression in torch (the release's DiffJPEG arithmetic).
"""
