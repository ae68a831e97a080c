"""``diffbir serve``: the web UI (needs ``pip install "diffbir[ui]"``)."""

from __future__ import annotations

import argparse
import sys

from diffbir.cli.common import add_model_source_args
from diffbir.errors import ConfigError
from diffbir.ui.app import build_app, check_address, display_url, launch, require_gradio
from diffbir.ui.core import DEFAULT_MAX_FILES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start the web UI (upload, restore, compare, download)",
        description=(
            "Serve a web page for restoring photos without a terminal. It listens on "
            "127.0.0.1 (this computer only) unless --host says otherwise; --share makes a "
            "public gradio.live link and is off unless asked. Models load on the first run "
            "and are shared by all later runs, one run at a time."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 = all)")
    g.add_argument("--port", type=int, default=7860, help="port to listen on")
    g.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    g = p.add_argument_group("model")
    add_model_source_args(g)
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload (MB)"
    )
    g.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest input (width x height)"
    )
    g.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="most images per run")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    require_gradio()
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or args.max_files < 1:
        raise ConfigError("--max-upload-mb, --max-pixels and --max-files must be positive")
    # A busy or invalid address is reported before the page is built, in one line.
    check_address(args.host, args.port)
    demo = build_app(
        weights_dir=args.weights_dir,
        model_config=args.model_config,
        device=args.device,
        dtype=args.dtype,
        download=not args.no_download,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_files=args.max_files,
    )

    def ready(_local_url: str) -> None:
        url = display_url(args.host, args.port)
        print(f"diffbir: serving on {url} (Ctrl+C stops)", file=sys.stderr, flush=True)

    launch(
        demo,
        host=args.host,
        port=args.port,
        share=args.share,
        max_upload_mb=args.max_upload_mb,
        # gradio's own banner suggests launch(share=True); it is only useful for the link.
        quiet=not args.share,
        on_ready=ready,
    )
    return 0
