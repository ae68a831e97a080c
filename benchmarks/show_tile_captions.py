"""Show what each latent tile of a tiled restoration is told about a photo.

With ``--tile-captions each`` every latent tile of the diffusion stage gets a
caption of its own region of the photo instead of the whole photo's caption
(which can paint its objects into every tile). This script plans the tiles of
a run exactly as ``diffbir restore`` does (same size, ``--upscale``,
``--latent-tile``/``--max-memory``), captions the photo and each tile's region
with the chosen captioner, and prints one row per tile: its box in the photo's
pixels and its caption; ``--overlay FILE`` also draws the numbered boxes on the
photo.

    python benchmarks/show_tile_captions.py ../shared/samples/bid/palace.png \\
        --upscale 4 --latent-tile 512 --captioner git --overlay tiles.png

It needs the captioner's weights (``diffbir download git``); ``--model-dir``
names a model folder instead (e.g. a tiny random one, which shows the tiles
with meaningless captions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--version", default="v2.1")
    parser.add_argument("--task", default="sr")
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--latent-tile", type=int, default=512, help="pixels, multiple of 64")
    parser.add_argument("--tile-overlap", type=float, default=0.25)
    parser.add_argument("--captioner", default="git")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--model-dir", type=Path, help="a captioner model folder to use instead")
    parser.add_argument("--overlay", type=Path, help="write the photo with numbered tile boxes")
    args = parser.parse_args()

    from PIL import ImageDraw

    from diffbir.captioning import load_captioner
    from diffbir.config.presets import get_preset
    from diffbir.config.settings import RestoreOptions, resolve
    from diffbir.imaging.io import read_image
    from diffbir.restore.prompts import describe_images, to_pil

    image = read_image(args.photo)
    options = RestoreOptions(
        upscale=args.upscale,
        latent_tile=args.latent_tile,
        tile_overlap=args.tile_overlap,
        captioner=args.captioner,
        tile_captions="each",
        seed=0,
    )
    config = resolve(get_preset(args.version, args.task), options)
    captioner = load_captioner(
        args.captioner, device="cpu", weights_dir=args.weights_dir, path=args.model_dir
    )
    with captioner:
        prompt = describe_images(image.rgb[None], config, lambda: captioner)[0]
    h, w = image.rgb.shape[-2:]
    print(f"{args.photo.name}: {w}x{h}, x{args.upscale:g}, latent tiles of {args.latent_tile} px")
    print(f"whole photo: {prompt.caption!r}")
    if not prompt.tiles:
        print("sampling is not tiled at this size: one caption for the whole photo")
        return 0
    print("| tile | box in the photo (x0, y0, x1, y1) | caption |")
    print("|---|---|---|")
    boxes = []
    for number, (region, tile_prompt) in enumerate(prompt.tiles):
        top, bottom, left, right = region
        box = (round(left * w), round(top * h), round(right * w), round(bottom * h))
        boxes.append(box)
        caption = tile_prompt.removesuffix(config.prompt).rstrip(", ")
        print(f"| {number} | {box} | {caption} |")
    if args.overlay:
        canvas = to_pil(image.rgb)
        draw = ImageDraw.Draw(canvas)
        for number, box in enumerate(boxes):
            draw.rectangle(box, outline=(255, 0, 0), width=max(1, w // 300))
            draw.text((box[0] + 3, box[1] + 3), str(number), fill=(255, 255, 0))
        canvas.save(args.overlay)
        print(f"overlay: {args.overlay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
