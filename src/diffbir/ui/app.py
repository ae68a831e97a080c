"""The web UI: ``diffbir serve`` (needs the ``ui`` extra: ``pip install "diffbir[ui]"``).

The page lays out the knobs of ``diffbir restore`` and shows the result beside
the input. The work itself is in :mod:`diffbir.ui.core`; this module only
builds the gradio page and starts the server. gradio is imported inside the
functions, so ``import diffbir.ui.app`` works without it.
"""

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffbir.config.presets import ALL_VERSIONS, TASK_CHOICES
from diffbir.diffusion.names import sampler_names
from diffbir.errors import DiffBIRError, printable
from diffbir.ui.core import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    OOM_MESSAGE,
    FormValues,
    PipelineCache,
    PipelineFactory,
    describe_upload,
    release_defaults,
    released_pipeline_factory,
    restore_uploads,
    uncertainty_overlay,
)
from diffbir.ui.video import DEFAULT_MAX_VIDEO_FRAMES, restore_video_upload, video_upload

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

log = logging.getLogger(__name__)

INSTALL_HINT = 'the web UI needs gradio: pip install "diffbir[ui]"'

# A wider page on large screens; a line kept for the status so the layout does not jump.
_CSS = """
.gradio-container { max-width: 1400px !important; }
#status { min-height: 1.5em; }
"""


def require_gradio():
    """Import gradio, or raise a one-line :class:`DiffBIRError` saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise DiffBIRError(INSTALL_HINT) from None
    return gradio


def build_app(
    *,
    weights_dir: str | Path | None = None,
    model_config: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    download: bool = True,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_files: int = DEFAULT_MAX_FILES,
    output_dir: str | Path | None = None,
    pipeline_factory: PipelineFactory | None = None,
):
    """Build the page (a ``gradio.Blocks``, queued so that runs never overlap).

    Models are loaded on the first run and shared by all later ones.
    ``pipeline_factory(version, task)`` replaces the released-weights loader
    (``weights_dir``, ``model_config``, ``device``, ``dtype``, ``download`` are
    then unused). Result files go to ``output_dir`` (default: a folder in the
    system temp directory, which gradio serves). Start it with :func:`launch`.
    """
    gr = require_gradio()
    factory = pipeline_factory or released_pipeline_factory(
        weights_dir=weights_dir,
        model_config=model_config,
        device=device,
        dtype=dtype,
        download=download,
    )
    cache = PipelineCache(factory)
    out_root = Path(output_dir or Path(tempfile.gettempdir()) / "diffbir-ui")
    release = release_defaults(FormValues.version, FormValues.task)
    defaults = FormValues(**{k: v for k, v in release.items() if k != "unused"})
    limits = dict(max_pixels=max_pixels, max_files=max_files)

    # No analytics calls home; gradio's copies of uploads and results older than a
    # day are deleted hourly, so a long-running server does not fill the disk.
    with gr.Blocks(
        title="DiffBIR", analytics_enabled=False, delete_cache=(3600, 24 * 3600)
    ) as demo:
        gr.Markdown(
            "## DiffBIR: blind image restoration\n"
            "Upload degraded photos (blurred, noisy, compressed, low resolution, old "
            "scans, faces), pick a task and press **Restore**. The first run loads the "
            f"models. Limits: {max_upload_mb:g} MB per file, "
            f"{max_pixels / 1e6:.1f} megapixels per image, {max_files} images per run; "
            f"or one video of at most {DEFAULT_MAX_VIDEO_FRAMES} frames, restored frame "
            "by frame with temporal consistency (longer clips: `diffbir restore clip.mp4`)."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                form = _input_controls(gr, defaults)
                form |= _sampling_controls(gr, defaults)
                form |= _caption_controls(gr)
                form |= _guidance_controls(gr)
                form |= _tiling_controls(gr, defaults)
                form |= _uncertainty_controls(gr, defaults)
            with gr.Column(scale=3, min_width=400):
                shown = _result_panel(gr)
        shown["results"] = gr.State([])
        shown["current"] = gr.State(0)  # the gallery's image in the before/after view
        _wire_release_change(gr, form)
        _wire_runs(gr, form, shown, cache, out_root, limits)

    # One run at a time: two restorations on one GPU would only fight for memory.
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


#: The page's controls that make a :class:`FormValues` (their keys are its fields).
_FORM_FIELDS = (
    "version task upscale steps sampler cfg_scale prompt negative_prompt control_strength "
    "guidance_scale guidance_space guidance_loss guidance_mask guidance_start guidance_stop "
    "color_fix seed cleaner_tile vae_tile latent_tile tile_overlap captioner caption "
    "tile_captions uncertainty uncertainty_samples overlay_opacity"
).split()
#: Controls whose values a release's defaults set (version or task changes).
_RELEASE_FIELDS = "upscale steps sampler cfg_scale prompt negative_prompt tile_overlap".split()
#: Controls a release may have no use for (greyed out), their values left as they are.
_OPTIONAL_FIELDS = (
    "control_strength guidance_scale guidance_space guidance_loss guidance_mask "
    "guidance_start guidance_stop tile_captions"
).split()


def _input_controls(gr, defaults: FormValues) -> dict[str, Any]:
    """The uploads, the release and task, the upscale and the Restore button."""

    c: dict[str, Any] = {}
    c["files"] = gr.File(
        label="Images, or one short video",
        file_count="multiple",
        file_types=["image", "video"],
        elem_id="inputs",
    )
    with gr.Row():
        c["version"] = gr.Dropdown(
            list(ALL_VERSIONS),
            value=defaults.version,
            label="Release (hypir: HYPIR, one step)",
            elem_id="version",
        )
        c["task"] = gr.Dropdown(
            list(TASK_CHOICES), value=defaults.task, label="Task", elem_id="task"
        )
    c["upscale"] = gr.Slider(
        1, 8, value=defaults.upscale, step=0.5, label="Upscale", elem_id="upscale"
    )
    c["run_button"] = gr.Button("Restore", variant="primary", elem_id="run")
    return c


def _sampling_controls(gr, defaults: FormValues) -> dict[str, Any]:
    """Steps, sampler, CFG, control strength, prompts, seed, colour fix."""

    c: dict[str, Any] = {}
    with gr.Accordion("Sampling", open=False, elem_id="sampling"):
        with gr.Row():
            c["steps"] = gr.Slider(
                1, 200, value=defaults.steps, step=1, label="Steps", elem_id="steps"
            )
            c["sampler"] = gr.Dropdown(
                sampler_names(), value=defaults.sampler, label="Sampler", elem_id="sampler"
            )
        with gr.Row():
            c["cfg_scale"] = gr.Slider(
                0, 15, value=defaults.cfg_scale, step=0.5, label="CFG scale (1 = off)",
                elem_id="cfg",
            )  # fmt: skip
            c["control_strength"] = gr.Slider(
                0, 2, value=defaults.control_strength, step=0.05, label="Control strength"
            )
        c["prompt"] = gr.Textbox(value=defaults.prompt, label="Prompt", lines=2)
        c["negative_prompt"] = gr.Textbox(
            value=defaults.negative_prompt, label="Negative prompt", lines=2
        )
        with gr.Row():
            c["seed"] = gr.Number(value=defaults.seed, precision=0, label="Seed (-1 = random)")
            c["color_fix"] = gr.Dropdown(
                ["wavelet", "adain", "none"], value=defaults.color_fix, label="Colour fix"
            )
    return c


def _caption_controls(gr) -> dict[str, Any]:
    """The captioner, the tiles' captions, the editable caption and Describe."""
    from diffbir.captioning.names import captioner_names

    c: dict[str, Any] = {}
    with gr.Accordion("Caption", open=False, elem_id="captioning"):
        gr.Markdown(
            "v2.1 was trained on captioned photos: a caption of each photo goes "
            "before the prompt. **Describe** shows the first photo's caption; "
            "edit it to use your words for every photo, or clear it to caption "
            "each photo at the run."
        )
        with gr.Row():
            c["captioner"] = gr.Dropdown(
                ["auto", *captioner_names()],
                value="auto",
                label="Captioner (auto: the release's on a GPU, the light one else)",
                elem_id="captioner",
            )
            c["tile_captions"] = gr.Dropdown(
                ["whole", "each", "off"],
                value="whole",
                label="Tiles: the photo's caption, each tile's own, or none",
            )
        c["caption"] = gr.Textbox(value="", label="Caption (editable)", lines=2, elem_id="caption")
        c["describe_button"] = gr.Button("Describe the first photo", elem_id="describe")
    return c


def _guidance_controls(gr) -> dict[str, Any]:
    """Latent image guidance: its scale, space, loss, mask and timestep window."""
    c: dict[str, Any] = {}
    with gr.Accordion("Fidelity guidance", open=False):
        gr.Markdown(
            "Pulls the result toward the stage-1 output: more fidelity, less "
            "invention. The scale is the v2 release's `--g_scale`."
        )
        c["guidance_scale"] = gr.Slider(
            0, 1, value=0, step=0.01, label="Fidelity (0 = off)", elem_id="fidelity"
        )
        with gr.Row():
            c["guidance_space"] = gr.Dropdown(["latent", "pixel"], value="latent", label="Space")
            c["guidance_loss"] = gr.Dropdown(
                ["mse", "weighted_mse"], value="mse", label="Loss (weighted: edges free)"
            )
        c["guidance_mask"] = gr.Image(
            type="filepath",
            image_mode="L",
            label="Fidelity mask (optional): white holds to stage 1, black is free",
            sources=["upload"],
            height=160,
        )
        with gr.Row():
            c["guidance_start"] = gr.Number(value=1001, precision=0, label="Apply while t <")
            c["guidance_stop"] = gr.Number(value=-1, precision=0, label="... and t >")
    return c


def _tiling_controls(gr, defaults: FormValues) -> dict[str, Any]:
    """Tile sizes per stage and their overlap."""
    c: dict[str, Any] = {}
    with gr.Accordion("Tiling (large images)", open=False):
        with gr.Row():
            c["cleaner_tile"] = gr.Number(value=0, precision=0, label="Stage-1 tile (0 = auto)")
            c["vae_tile"] = gr.Number(value=0, precision=0, label="VAE tile (0 = auto)")
            c["latent_tile"] = gr.Number(value=0, precision=0, label="Diffusion tile (0 = auto)")
        c["tile_overlap"] = gr.Slider(
            0, 0.75, value=defaults.tile_overlap, step=0.05, label="Tile overlap"
        )
    return c


def _uncertainty_controls(gr, defaults: FormValues) -> dict[str, Any]:
    """The map of where the model invented: on/off, its samples, the overlay's opacity."""
    from diffbir.restore.uncertainty import SCALE_LEVELS

    c: dict[str, Any] = {}
    with gr.Accordion("Where the model invented (uncertainty map)", open=False):
        gr.Markdown(
            "Shows over the result where it depends on chance. With 1 sample: where its "
            "detail departs from the stage-1 image; with 2 or more: how much that many "
            "restorations with different noise differ (each is a full run). Scale 0 to "
            f"{SCALE_LEVELS:g} levels: black, purple, red, orange, pale yellow. Low values "
            "do not mean faithful: every draw can invent the same thing."
        )
        c["uncertainty"] = gr.Checkbox(
            value=defaults.uncertainty, label="Compute the uncertainty map", elem_id="uncertainty"
        )
        with gr.Row():
            c["uncertainty_samples"] = gr.Number(
                value=defaults.uncertainty_samples,
                precision=0,
                minimum=1,
                maximum=16,
                label="Samples (1: detail vs stage 1; 2+: spread)",
            )
            c["overlay_opacity"] = gr.Slider(
                0, 1, value=defaults.overlay_opacity, step=0.05, label="Overlay opacity",
                elem_id="overlay_opacity",
            )  # fmt: skip
    return c


def _result_panel(gr) -> dict[str, Any]:
    """Before/after, the stage-1 output, the gallery, the downloads, the status line."""
    c: dict[str, Any] = {}
    c["compare"] = gr.ImageSlider(
        label="Before / after (drag the handle)",
        type="filepath",
        format="png",
        elem_id="compare",
        interactive=False,
    )
    with gr.Row():
        c["stage1"] = gr.Image(
            label="Stage-1 output (the diffusion condition)",
            type="filepath",
            format="png",
            interactive=False,
            elem_id="stage1",
            height=260,
        )
        c["gallery"] = gr.Gallery(
            label="All results (click to compare)",
            columns=3,
            object_fit="contain",
            height=260,
            elem_id="gallery",
            interactive=False,
        )
    c["uncertainty"] = gr.Image(
        label="Uncertainty map (0..32 levels; with the toggle on, also laid over the result)",
        type="filepath",
        format="png",
        interactive=False,
        elem_id="uncertainty_map",
        height=260,
    )
    c["video"] = gr.Video(label="Restored video", interactive=False, elem_id="video")
    c["download"] = gr.File(
        label="Download (full-size PNG, or the restored MP4)",
        file_count="multiple",
        interactive=False,
        elem_id="download",
    )
    c["status"] = gr.Markdown(elem_id="status")
    return c


def _wire_release_change(gr, form: dict[str, Any]) -> None:
    """A new release or task shows its defaults; controls it has no use for go inactive."""

    def on_release_change(version_value: str, task_value: str):
        try:
            values = release_defaults(version_value, task_value)
        except DiffBIRError as exc:
            raise gr.Error(str(exc)) from None
        unused = values["unused"]
        updates = [
            gr.update(interactive=False)
            if name in unused
            else gr.update(value=values[name], interactive=True)
            for name in _RELEASE_FIELDS
        ]
        updates += [gr.update(interactive=name not in unused) for name in _OPTIONAL_FIELDS]
        return updates

    outputs = [form[name] for name in (*_RELEASE_FIELDS, *_OPTIONAL_FIELDS)]
    for control in (form["version"], form["task"]):
        control.change(on_release_change, [form["version"], form["task"]], outputs, queue=False)


def _wire_runs(gr, form, shown, cache: PipelineCache, out_root: Path, limits: dict) -> None:
    """Describe, Restore and the gallery's selection."""
    fields = {form[name]: name for name in _FORM_FIELDS}  # control -> FormValues field
    files = form["files"]

    def values(data: dict) -> FormValues:
        return FormValues(**{name: data[control] for control, name in fields.items()})

    def on_describe(data: dict, progress=gr.Progress()):  # noqa: B008
        uploads = [_upload_path(u) for u in data[files] or []]
        try:
            return describe_upload(
                uploads[0] if uploads else None,
                values(data),
                cache,
                max_pixels=limits["max_pixels"],
                report=lambda fraction, text: progress(fraction, desc=text),
            )
        except DiffBIRError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except _out_of_memory():
            raise gr.Error(OOM_MESSAGE, print_exception=False) from None

    form["describe_button"].click(
        on_describe, {files, *fields}, [form["caption"]], concurrency_limit=1,
        concurrency_id="gpu",
    )  # fmt: skip

    def on_run(data: dict, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        uploads = [_upload_path(u) for u in data[files] or []]
        try:
            clip = video_upload(uploads)
            if clip is not None:  # one short video: the clip loop of diffbir restore
                restored = restore_video_upload(
                    clip,
                    values(data),
                    cache,
                    out_root,
                    max_pixels=limits["max_pixels"],
                    report=lambda fraction, text: progress(fraction, desc=text),
                )
                return _shown_video(restored, shown)
            run = restore_uploads(
                uploads,
                values(data),
                cache,
                out_root,
                **limits,
                report=lambda fraction, text: progress(fraction, desc=text),
            )
        except DiffBIRError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except _out_of_memory():
            raise gr.Error(OOM_MESSAGE, print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the page either
            log.exception("restoration failed")
            raise gr.Error(f"internal error: {type(exc).__name__}: {exc}") from None
        for failure in run.failures:
            gr.Warning(failure)
        return _shown_results(run, shown)

    names = ("compare", "stage1", "gallery", "uncertainty", "video", "download", "status")
    names += ("results",)
    outputs = [shown[n] for n in (*names, "current")]
    form["run_button"].click(
        on_run, {files, *fields}, outputs, concurrency_limit=1, concurrency_id="gpu"
    )

    def on_select(table: list[dict[str, Any]], opacity: float, event: gr.SelectData):
        if not table or event.index is None or event.index >= len(table):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        row = table[event.index]
        return _after(row, opacity), row["stage1"], row["uncertainty"], event.index

    shown["gallery"].select(
        on_select,
        [shown["results"], form["overlay_opacity"]],
        [shown["compare"], shown["stage1"], shown["uncertainty"], shown["current"]],
        queue=False,
    )

    def on_opacity(table: list[dict[str, Any]], current: int, opacity: float):
        if not table or current >= len(table) or table[current]["raw"] is None:
            return gr.skip()
        return _after(table[current], opacity)

    form["overlay_opacity"].release(
        on_opacity,
        [shown["results"], shown["current"], form["overlay_opacity"]],
        [shown["compare"]],
    )


def _after(row: dict[str, Any], opacity: float) -> tuple[str, str]:
    """The before/after pair of a result row: with a map, the result under it at ``opacity``."""
    if row["raw"] is None:
        return row["before"], row["result"]
    return row["before"], str(uncertainty_overlay(row["result"], row["raw"], opacity))


def _shown_results(run, shown: dict[str, Any]) -> dict:
    """What the result panel shows of a finished run (the first image compared)."""
    first = run.images[0]
    lines = [f"**{run.summary()}**; result {first.size[1]}x{first.size[0]} px."]
    lines += [f"- {i.name}: caption *{i.caption}*" for i in run.images if i.caption]
    lines += [
        f"- {i.name}: uncertainty, {i.uncertainty_note}" for i in run.images if i.uncertainty_note
    ]
    lines += [f"- {failure}" for failure in run.failures]
    table = [results_row(i) for i in run.images]
    return {
        shown["compare"]: (table[0]["before"], table[0]["after"]),
        shown["stage1"]: str(first.stage1),
        shown["gallery"]: [(str(i.result), i.name) for i in run.images],
        shown["uncertainty"]: table[0]["uncertainty"],
        shown["video"]: None,
        shown["download"]: [p for row in table for p in row["downloads"]],
        shown["status"]: "\n".join(lines),
        shown["results"]: table,
        shown["current"]: 0,
    }


def _shown_video(video, shown: dict[str, Any]) -> dict:
    """What the result panel shows of a restored clip (the photo views emptied)."""
    lines = [f"**{video.summary()}**; frames {video.size[1]}x{video.size[0]} px."]
    if video.caption:
        lines.append(f"- caption *{video.caption}*")
    return {
        shown["compare"]: None,
        shown["stage1"]: None,
        shown["gallery"]: [],
        shown["uncertainty"]: None,
        shown["video"]: str(video.result),
        shown["download"]: [str(video.result)],
        shown["status"]: "\n".join(lines),
        shown["results"]: [],
        shown["current"]: 0,
    }


def results_row(image) -> dict[str, Any]:
    """What the page keeps of one :class:`~diffbir.ui.core.RestoredImage` (paths as text)."""

    def text(path) -> str | None:
        return None if path is None else str(path)

    maps = [p for p in (image.uncertainty, image.uncertainty_raw) if p is not None]
    return {
        "before": str(image.before),
        "result": str(image.result),
        "after": str(image.overlay or image.result),
        "stage1": str(image.stage1),
        "uncertainty": text(image.uncertainty),
        "raw": text(image.uncertainty_raw),
        "downloads": [str(image.result), *map(str, maps)],
    }


def launch(
    demo,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    block: bool = True,
    quiet: bool = False,
    on_ready: Callable[[str], None] | None = None,
):
    """Serve ``demo`` on ``host:port`` (loopback unless told otherwise).

    The address is checked first (:func:`check_address`), so a busy or invalid
    port is a one-line :class:`DiffBIRError`. ``on_ready(local_url)`` is called
    once the server answers. ``block=False`` returns at once with the server
    running in the background (close it with ``demo.close()``). Returns the
    local URL.
    """
    gr = require_gradio()
    if port is not None:
        check_address(host, port)
    try:
        _, local_url, _ = demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            max_file_size=int(max_upload_mb * 1024 * 1024),
            quiet=quiet,
            show_error=True,
            ssr_mode=False,
            mcp_server=False,
            inbrowser=False,
            theme=_theme(gr),
            css=_CSS,
        )
    except OSError as exc:  # taken between the check and the start, or refused by uvicorn
        reason = " ".join(str(exc).split(". ")[0].split())
        raise DiffBIRError(
            f"could not start the web UI on {display_url(host, port)}: {printable(reason)}"
        ) from None
    if on_ready is not None:
        on_ready(local_url)
    if block:
        demo.block_thread()
    return local_url


def check_address(host: str, port: int) -> None:
    """Raise a one-line :class:`DiffBIRError` unless a server could listen on ``host:port``.

    Binds (and closes at once) a socket on every address ``host`` resolves to,
    as the server will, so a busy port, an unknown host or a port that needs
    privileges is reported before anything is loaded or printed.
    """
    import errno
    import socket

    where = display_url(host, port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise DiffBIRError(f"--port must be in 1..65535, got {printable(port)}")
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(
            name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError, ValueError):
        raise DiffBIRError(
            f"--host {printable(host)}: not a known host name or address of this machine"
        ) from None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                reason = "the port is busy (another program listens there); choose another --port"
            elif exc.errno == errno.EACCES:
                reason = "permission denied (ports below 1024 usually need administrator rights)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                reason = f"{printable(host)} is not an address of this machine (see --host)"
            else:
                reason = printable(exc.strerror or exc)
            raise DiffBIRError(f"cannot serve on {where}: {reason}") from None


def display_url(host: str, port: int | None) -> str:
    """``http://host:port`` as messages print it (IPv6 in brackets, control characters escaped)."""
    shown = printable(host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"  # IPv6
    return f"http://{shown}" + (f":{port}" if port is not None else "")


def _theme(gr):
    # System fonts: the default theme fetches Google Fonts, which offline or
    # privacy-minded installs cannot (or should not) reach.
    sans = [gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), "sans-serif"]
    mono = [gr.themes.Font("ui-monospace"), "monospace"]
    return gr.themes.Soft(primary_hue="indigo", font=sans, font_mono=mono)


def _upload_path(upload: Any) -> str:
    """gradio hands files as paths (or objects with ``.name`` in older versions)."""
    return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))


def _out_of_memory() -> type[BaseException]:
    import torch

    return torch.cuda.OutOfMemoryError
