"""The web UI's non-page parts: form -> options, the shared pipeline, a run, `diffbir serve`.

A fake pipeline (passed in, never patched in) stands for the models, so these
tests need no weights; the page itself is driven in a browser by
``test_app_browser.py``.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffbir.config.presets import TASKS, VERSIONS, get_preset
from diffbir.errors import ConfigError, DiffBIRError, ImageReadError
from diffbir.imaging.io import read_image
from diffbir.imaging.resize import resize_for_display as resize
from diffbir.restore.base import RestoreResult
from diffbir.restore.prompts import ImagePrompt
from diffbir.ui.core import (
    OOM_MESSAGE,
    FormValues,
    PipelineCache,
    new_run_folder,
    release_defaults,
    restore_uploads,
    safe_stem,
)


class FakePipeline:
    """Returns the inverted, upscaled input; the stage-1 output is the plain upscale."""

    def __init__(self, fail_on: set[int] | None = None, error: BaseException | None = None):
        self.calls: list[tuple[tuple[int, ...], object]] = []
        self.fail_on = fail_on or set()
        self.error = error

    device = torch.device("cpu")

    def resolve(self, options):
        from diffbir.config.settings import resolve

        return resolve(get_preset("v2.1", "sr"), options)

    def _config(self, options):
        from diffbir.config.settings import RunConfig

        return options if isinstance(options, RunConfig) else self.resolve(options)

    def free_captioner(self):
        pass

    def prepare_image_prompts(self, prompts, *, drop_text_encoder=False):
        pass

    def image_prompts(self, lq, options, given=None):
        """The given prompt, else a caption that names the image's size."""
        config = self._config(options)
        if given and given[0] is not None:
            return [given[0]]
        caption = "" if config.captioner == "none" else f"a photo {lq.shape[-1]}x{lq.shape[-2]}"
        prompt = ", ".join(t for t in (caption, config.prompt) if t)
        return [ImagePrompt(prompt, config.negative_prompt, caption)]

    def restore(self, lq: torch.Tensor, options, prompts=None) -> RestoreResult:
        options = self._config(options)
        self.calls.append((tuple(lq.shape), options))
        self.prompts = prompts
        if len(self.calls) - 1 in self.fail_on:
            raise self.error
        h, w = lq.shape[-2:]
        up = resize(lq, (int(h * options.upscale), int(w * options.upscale)))
        return RestoreResult(image=1 - up, stage1=up, config=options, prompts=list(prompts or []))

    __call__ = restore


class CountingFactory:
    """A pipeline factory that records what it was asked to load."""

    def __init__(self, make=FakePipeline):
        self.loads: list[tuple[str, str]] = []
        self.make = make

    def __call__(self, version: str, task: str):
        self.loads.append((version, task))
        return self.make()


def _image(path: Path, size=(20, 30), mode="RGB", seed=0) -> Path:
    h, w = size
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(), mode if channels > 1 else "L").save(path)
    return path


# --------------------------------------------------------------------- options
def test_form_values_map_to_options():
    form = FormValues(
        upscale=2,
        steps=7,
        sampler="ddim",
        cfg_scale=3.5,
        prompt="a photo",
        negative_prompt="blurry",
        control_strength=0.8,
        guidance_scale=100,
        guidance_space="pixel",
        guidance_start=800,
        guidance_stop=100,
        color_fix="adain",
        seed=5,
        cleaner_tile=512,
        vae_tile=0,
        latent_tile=256,
        tile_overlap=0.5,
    )
    options = form.to_options()
    assert (options.upscale, options.steps, options.sampler) == (2.0, 7, "ddim")
    assert (options.cfg_scale, options.prompt, options.negative_prompt) == (
        3.5,
        "a photo",
        "blurry",
    )
    assert options.control_strength == 0.8
    assert (options.guidance_scale, options.guidance_space) == (100.0, "pixel")
    assert (options.guidance_start, options.guidance_stop) == (800, 100)
    assert (options.color_fix, options.seed) == ("adain", 5)
    # Zero means "automatic" in the page and None in the pipeline.
    assert (options.cleaner_tile, options.vae_tile, options.latent_tile) == (512, None, 256)
    assert options.tile_overlap == 0.5
    # The sampler's progress bar feeds the page's.
    assert options.progress is True


def test_fidelity_slider_and_mask_upload(tmp_path):
    import numpy as np
    from PIL import Image

    mask = np.zeros((8, 12), np.uint8)
    mask[:, :6] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    options = FormValues(
        guidance_scale=0.3, guidance_loss="weighted_mse", guidance_mask=str(tmp_path / "mask.png")
    ).to_options()
    assert options.guidance_scale == 0.3 and options.guidance_loss == "weighted_mse"
    assert options.guidance_mask.shape == (1, 1, 8, 12)
    assert options.guidance_mask[..., :6].min() == 1 and options.guidance_mask[..., 6:].max() == 0
    assert FormValues().to_options().guidance_mask is None
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DiffBIRError, match="bad.png"):
        FormValues(guidance_mask=str(tmp_path / "bad.png")).to_options()


def test_form_values_random_seed_and_empty_prompt():
    options = FormValues(seed=-1, prompt=None, negative_prompt=None).to_options()
    assert options.seed is None
    # An empty box means an empty prompt, not the release's (the page shows the release's).
    assert options.prompt == "" and options.negative_prompt == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"latent_tile": 100}, "latent tile must be a multiple of 64"),
        ({"tile_overlap": 1.0}, "tile overlap"),
        ({"upscale": 0}, "upscale must be positive"),
    ],
)
def test_form_values_refuse_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        FormValues(**change).to_options()


@pytest.mark.parametrize("version", [*VERSIONS, "hypir"])
@pytest.mark.parametrize("task", TASKS)
def test_release_defaults_follow_the_preset(version, task):
    values = release_defaults(version, task)
    preset = get_preset(version, task)
    assert values == {
        "upscale": preset.upscale,
        "steps": preset.steps,
        "sampler": preset.sampler,
        "cfg_scale": preset.cfg_scale,
        "prompt": preset.prompt,
        "negative_prompt": preset.negative_prompt,
        "tile_overlap": preset.tile_overlap,
        "unused": preset.unused_options,
    }


def test_the_form_leaves_out_what_hypir_has_no_use_for():
    """The page always holds sampling values; with HYPIR they are not the run's (and
    not refused): only the settings HYPIR takes reach it."""
    form = FormValues(
        version="hypir", steps=50, cfg_scale=9.0, guidance_scale=0.5, tile_overlap=None
    )
    options = form.to_options()
    assert options.steps is None and options.cfg_scale is None and options.guidance_scale == 0
    assert options.tile_overlap is None  # HYPIR's own 0.5
    from diffbir.restore.factory import resolve_run

    config = resolve_run("hypir", "sr", options)
    assert config.tile_overlap == 0.5 and config.steps == 1 and "cfg_scale" not in config.as_dict()


def test_release_defaults_refuse_unknown_release():
    with pytest.raises(ConfigError, match="unknown version"):
        release_defaults("v9", "sr")


# ------------------------------------------------------------- pipeline cache
def test_pipeline_cache_loads_lazily_once_per_release_and_frees_the_old_one():
    factory = CountingFactory()
    cache = PipelineCache(factory)
    assert factory.loads == [] and cache.loaded is None
    messages: list[str] = []
    first = cache.get("v2.1", "sr", on_load=messages.append)
    assert cache.get("v2.1", "sr", on_load=messages.append) is first
    assert factory.loads == [("v2.1", "sr")]
    assert messages == ["loading the v2.1 sr models (first use)"]
    old = weakref.ref(first)
    del first
    second = cache.get("v2", "face")
    gc.collect()
    assert factory.loads == [("v2.1", "sr"), ("v2", "face")]
    assert cache.loaded == ("v2", "face")
    assert old() is None, "the previous release's models are still referenced"
    cache.clear()
    assert cache.loaded is None
    assert cache.get("v2", "face") is not second


def test_pipeline_cache_concurrent_first_use_loads_once():
    release = threading.Event()
    started = threading.Barrier(4)

    class SlowFactory(CountingFactory):
        def __call__(self, version, task):
            release.wait(timeout=10)
            return super().__call__(version, task)

    factory = SlowFactory()
    cache = PipelineCache(factory)
    got = []

    def worker():
        started.wait(timeout=10)
        got.append(cache.get("v2.1", "sr"))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait(timeout=10)
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert factory.loads == [("v2.1", "sr")]
    assert len(got) == 3 and all(p is got[0] for p in got)


def test_pipeline_cache_failed_load_is_retried():
    calls = []

    def factory(version, task):
        calls.append(version)
        if len(calls) == 1:
            raise DiffBIRError("weights missing")
        return FakePipeline()

    cache = PipelineCache(factory)
    with pytest.raises(DiffBIRError, match="weights missing"):
        cache.get("v2.1", "sr")
    assert cache.loaded is None
    assert isinstance(cache.get("v2.1", "sr"), FakePipeline)


# ------------------------------------------------------------------------ run
def test_restore_uploads_writes_full_size_png_stage1_and_before(tmp_path):
    src = _image(tmp_path / "photo one.png", size=(20, 30))
    factory = CountingFactory()
    progress: list[tuple[float, str]] = []
    run = restore_uploads(
        [src],
        FormValues(upscale=2, steps=3),
        PipelineCache(factory),
        tmp_path / "out",
        report=lambda fraction, text: progress.append((fraction, text)),
    )
    assert run.failures == []
    assert len(run.images) == 1
    item = run.images[0]
    assert item.name == "photo one.png" and item.size == (40, 60)
    assert item.result.name == "01_photo_one_diffbir.png"
    assert item.result.parent.parent == tmp_path / "out"
    with Image.open(item.result) as png:
        assert png.format == "PNG" and png.size == (60, 40)
    lq = read_image(src).rgb.unsqueeze(0)
    expected = 1 - resize(lq, (40, 60))[0]
    assert torch.allclose(read_image(item.result).rgb, expected, atol=1 / 255 + 1e-6)
    # The slider's "before" lines up with the result; stage 1 is the cleaner's output.
    assert torch.allclose(read_image(item.before).rgb, 1 - expected, atol=1 / 255 + 1e-6)
    assert read_image(item.stage1).size == (40, 60)
    assert progress[0] == (0.0, "loading models")
    assert progress[-1] == (1.0, "done")
    assert any("restoring photo one.png (1/1)" in text for _, text in progress)
    assert "1 restored" in run.summary() and "failed" not in run.summary()


def test_restore_uploads_shows_srgb_of_a_wide_gamut_photo_with_its_exif(tmp_path):
    """The page works in sRGB (what browsers show): an Adobe RGB upload is converted, its
    result is tagged sRGB, and its date and camera are carried, its GPS position not."""
    from diffbir.imaging import profiles
    from diffbir.imaging.icc_build import make_profile

    adobe = make_profile("Adobe RGB (1998)")
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, :8] = (150, 120, 90)
    pixels[:, 8:] = (40, 160, 200)
    exif = Image.Exif()
    exif[0x0110] = "Rolleiflex"
    exif.get_ifd(0x8769)[0x9003] = "1961:07:14 10:00:00"
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 0.0)
    src = tmp_path / "scan.jpg"
    Image.fromarray(pixels).save(src, icc_profile=adobe, exif=exif, quality=100, subsampling=0)
    run = restore_uploads(
        [src], FormValues(upscale=1), PipelineCache(CountingFactory()), tmp_path / "out"
    )
    item = run.images[0]
    expected = np.asarray(profiles.to_srgb_image(Image.fromarray(pixels), adobe))
    for path, flip in ((item.before, False), (item.result, True)):
        with Image.open(path) as png:
            assert profiles.is_srgb(png.info["icc_profile"])
            shown = np.asarray(png.convert("RGB")).astype(int)
        want = 255 - expected.astype(int) if flip else expected.astype(int)
        assert np.abs(shown - want).max() <= 2, path.name  # JPEG at q100, a level of rounding
    assert np.abs(expected.astype(int) - pixels).max() > 10  # the conversion did something
    with Image.open(item.result) as png:
        carried = png.getexif()
        assert carried[0x0110] == "Rolleiflex"
        assert carried.get_ifd(0x8769)[0x9003] == "1961:07:14 10:00:00"
        assert not carried.get_ifd(0x8825)


def test_restore_uploads_keeps_transparency(tmp_path):
    src = _image(tmp_path / "logo.png", size=(16, 16), mode="RGBA")
    run = restore_uploads(
        [src], FormValues(upscale=1), PipelineCache(CountingFactory()), tmp_path / "out"
    )
    with Image.open(run.images[0].result) as png:
        assert png.mode == "RGBA"
        alpha_in = np.asarray(Image.open(src))[..., 3]
        assert np.array_equal(np.asarray(png)[..., 3], alpha_in)


def test_restore_uploads_reports_bad_files_and_restores_the_rest(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    good = _image(tmp_path / "good.png")
    factory = CountingFactory()
    run = restore_uploads([bad, good], FormValues(upscale=1), PipelineCache(factory), tmp_path)
    assert [i.name for i in run.images] == ["good.png"]
    assert len(run.failures) == 1 and run.failures[0].startswith("broken.png: ")
    assert "1 restored" in run.summary() and "1 failed" in run.summary()


def test_restore_uploads_all_bad_fails_before_loading_models(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 garbage")
    big = _image(tmp_path / "big.png", size=(40, 40))
    factory = CountingFactory()
    with pytest.raises(ImageReadError) as info:
        restore_uploads([bad, big], FormValues(), PipelineCache(factory), tmp_path, max_pixels=1000)
    message = str(info.value)
    assert "broken.jpg: not a recognised image file" in message
    assert "big.png: image is 40x40" in message and "above the limit" in message
    assert "\n" not in message
    assert factory.loads == []


def test_restore_uploads_refuses_results_above_the_output_limit(tmp_path):
    small = _image(tmp_path / "small.png", size=(10, 10))
    large = _image(tmp_path / "large.png", size=(40, 40))
    factory = CountingFactory()
    run = restore_uploads(
        [small, large],
        FormValues(upscale=4),
        PipelineCache(factory),
        tmp_path,
        max_output_pixels=1600,
    )
    assert [i.name for i in run.images] == ["small.png"]
    assert run.failures == [
        "large.png: the result would be 160x160 pixels, above the limit of 1,600 pixels "
        "(40x40); lower the upscale"
    ]


def test_restore_uploads_out_of_memory_is_a_message(tmp_path):
    images = [_image(tmp_path / f"{n}.png", seed=i) for i, n in enumerate("ab")]

    def make():
        return FakePipeline(fail_on={0}, error=torch.OutOfMemoryError("CUDA out of memory"))

    run = restore_uploads(
        images, FormValues(upscale=1), PipelineCache(CountingFactory(make)), tmp_path
    )
    assert run.failures == [f"a.png: {OOM_MESSAGE}"]
    assert [i.name for i in run.images] == ["b.png"]

    with pytest.raises(DiffBIRError, match="a.png: out of memory"):
        restore_uploads(
            images[:1], FormValues(upscale=1), PipelineCache(CountingFactory(make)), tmp_path
        )


def test_restore_uploads_pipeline_error_is_a_message(tmp_path):
    image = _image(tmp_path / "a.png")

    def make():
        return FakePipeline(fail_on={0}, error=ConfigError("tiles too small"))

    with pytest.raises(DiffBIRError, match="a.png: tiles too small"):
        restore_uploads([image], FormValues(), PipelineCache(CountingFactory(make)), tmp_path)


def test_restore_uploads_checks_options_and_counts_before_loading(tmp_path):
    image = _image(tmp_path / "a.png")
    factory = CountingFactory()
    cache = PipelineCache(factory)
    with pytest.raises(ConfigError, match="steps"):
        restore_uploads([image], FormValues(steps=0), cache, tmp_path)
    with pytest.raises(DiffBIRError, match="upload at least one image"):
        restore_uploads([], FormValues(), cache, tmp_path)
    with pytest.raises(DiffBIRError, match="3 images uploaded; at most 2"):
        restore_uploads([image] * 3, FormValues(), cache, tmp_path, max_files=2)
    assert factory.loads == []


def test_restore_uploads_passes_the_form_to_the_pipeline(tmp_path):
    image = _image(tmp_path / "a.png", size=(8, 12))
    pipeline = FakePipeline()
    factory = CountingFactory(lambda: pipeline)
    restore_uploads(
        [image],
        FormValues(version="v2", task="denoise", upscale=1, steps=4, sampler="ddim", seed=9),
        PipelineCache(factory),
        tmp_path,
    )
    assert factory.loads == [("v2", "denoise")]
    ((shape, options),) = pipeline.calls
    assert shape == (1, 3, 8, 12)
    assert (options.steps, options.sampler, options.seed, options.upscale) == (4, "ddim", 9, 1.0)


def test_new_run_folder_keeps_only_recent_runs(tmp_path):
    folders = [new_run_folder(tmp_path, keep=3) for _ in range(5)]
    kept = sorted(p for p in tmp_path.iterdir())
    assert kept == sorted(folders[-3:])
    assert all(not f.exists() for f in folders[:2])


@pytest.mark.parametrize(
    ("name", "stem"),
    [("photo.png", "photo"), ("../../etc/passwd.png", "passwd"), ("été 1 (2).jpg", "t_1_2"),
     ("....png", "image"), ("a" * 100 + ".png", "a" * 64)],
)  # fmt: skip
def test_safe_stem(name, stem):
    assert safe_stem(name) == stem


# ---------------------------------------------------------------------- serve
def test_serve_arguments_default_to_loopback_without_share():
    from diffbir.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    assert args.max_upload_mb > 0 and args.max_pixels > 0
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--share", "--max-pixels", "100"]
    )
    assert (args.host, args.port, args.share, args.max_pixels) == ("0.0.0.0", 9000, True, 100)


def test_serve_without_gradio_prints_the_install_hint():
    # A None entry in sys.modules makes `import gradio` fail as if it were absent.
    code = (
        "import sys; sys.modules['gradio'] = None\n"
        "from diffbir.cli import main\n"
        "sys.exit(main(['serve', '--port', '1']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == 'diffbir: error: the web UI needs gradio: pip install "diffbir[ui]"'
    )


def test_build_app_loads_nothing_until_a_run():
    pytest.importorskip("gradio")
    from diffbir.ui.app import build_app

    factory = CountingFactory()
    demo = build_app(pipeline_factory=factory)
    assert factory.loads == []
    # The page queues runs, one at a time.
    assert demo.enable_queue is not False
    run = [fn for fn in demo.fns.values() if fn.name == "on_run"]
    assert len(run) == 1 and run[0].concurrency_limit == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _outward_address() -> str | None:
    """This machine's address on its default route, if it has one (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_serve_command_binds_loopback_loads_lazily_and_limits_uploads(tmp_path):
    pytest.importorskip("gradio")
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    # No weights and no downloads: the page must still come up, models load on first run.
    command = [sys.executable, "-m", "diffbir", "serve", "--port", str(port), "--no-download"]
    command += ["--weights-dir", str(tmp_path / "no_weights"), "--max-upload-mb", "0.001"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        page = None
        while page is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                page = httpx.get(url + "/", timeout=5)
            except httpx.TransportError:
                time.sleep(0.5)
        assert page is not None, f"server did not come up: {proc.poll()=}"
        assert page.status_code == 200 and "DiffBIR" in page.text
        upload = url + "/gradio_api/upload"
        small = httpx.post(upload, files=[("files", ("small.png", b"x" * 500))], timeout=30)
        assert small.status_code == 200
        big = httpx.post(upload, files=[("files", ("big.png", b"x" * 5000))], timeout=30)
        assert big.status_code == 413
        outward = _outward_address()
        if outward is not None:
            with pytest.raises(OSError), socket.create_connection((outward, port), timeout=5):
                pass
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"serving on http://127.0.0.1:{port}".encode() in output


# ------------------------------------------------------------------- captions
def test_an_edited_caption_is_every_images_prompt(tmp_path):
    factory = CountingFactory()
    cache = PipelineCache(factory)
    paths = [_image(tmp_path / "a.png"), _image(tmp_path / "b.png", seed=1)]
    form = FormValues(upscale=1, prompt="sharp", caption="  an old  harbour ")
    run = restore_uploads(paths, form, cache, tmp_path / "out")
    assert [i.caption for i in run.images] == ["an old harbour"] * 2
    pipeline = cache.get("v2.1", "sr")
    assert pipeline.prompts[0].prompt == "an old harbour, sharp"
    assert pipeline.prompts[0].source == "edited"


def test_without_an_edit_each_image_is_captioned(tmp_path):
    cache = PipelineCache(CountingFactory())
    paths = [_image(tmp_path / "a.png", size=(20, 30)), _image(tmp_path / "b.png", size=(24, 16))]
    form = FormValues(upscale=1, prompt="sharp", captioner="llava")
    run = restore_uploads(paths, form, cache, tmp_path / "out")
    assert [i.caption for i in run.images] == ["a photo 30x20", "a photo 16x24"]
    form = FormValues(upscale=1, prompt="sharp", captioner="none")
    run = restore_uploads(paths, form, cache, tmp_path / "out")
    assert [i.caption for i in run.images] == ["", ""]


def test_describe_shows_the_first_photos_caption(tmp_path):
    from diffbir.ui.core import describe_upload

    cache = PipelineCache(CountingFactory())
    path = _image(tmp_path / "a.png", size=(20, 30))
    assert describe_upload(path, FormValues(captioner="llava"), cache) == "a photo 30x20"
    with pytest.raises(DiffBIRError, match="choose a captioner"):
        describe_upload(path, FormValues(captioner="none"), cache)
    with pytest.raises(DiffBIRError, match="upload an image"):
        describe_upload(None, FormValues(captioner="llava"), cache)


def test_form_captioner_auto_is_the_release_default():
    assert FormValues(captioner="auto").to_options().captioner is None
    assert FormValues(captioner="none", tile_captions="off").to_options().tile_captions == "off"
    with pytest.raises(ConfigError, match="captioner"):
        FormValues(captioner="gpt").to_options()


def test_released_models_share_stage2_across_tasks(monkeypatch):
    from diffbir.restore.pipeline import DiffBIRPipeline
    from diffbir.ui.core import ReleasedModels

    loads = []

    class Loaded:
        def __init__(self, stage2):
            self.stage2 = stage2

    def from_preset(version, task, *, stage2=None, **loader):
        loads.append((version, task, stage2))
        return Loaded(stage2 if stage2 is not None else object())

    monkeypatch.setattr(DiffBIRPipeline, "from_preset", staticmethod(from_preset))
    models = ReleasedModels({})
    assert "Stable Diffusion" in models.describe_load("v2.1", "sr")
    first = models("v2.1", "sr")
    assert "already loaded" in models.describe_load("v2.1", "denoise")
    second = models("v2.1", "denoise")
    assert second.stage2 is first.stage2 and loads[1][2] is first.stage2
    third = models("v1", "sr")  # another ControlNet: loaded afresh
    assert third.stage2 is not first.stage2 and loads[2][2] is None
