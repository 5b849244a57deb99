"""Render a letter-glyph image folder: data normlab was not tuned on, where a mirror changes the
class (b/d and p/q are each other's mirror images; F, G, J, K, L, R have none).

    python scripts/glyphs.py OUT [--train 8000] [--test 2000]

writes OUT/train/<class>/*.png and OUT/test/<class>/*.png: 28x28 grayscale, one glyph each,
drawn in one of 22 pinned DejaVu fonts (Debian's fonts-dejavu-core and fonts-dejavu-extra) at a
random size, rotation, offset and brightness, beside a stray stroke, with noise. The same
arguments, fonts and Pillow/FreeType give the same images, byte for byte: every random number
comes from a generator seeded with the split's name. The images are data, written outside the
repository.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES = ("b", "d", "p", "q", "F", "G", "J", "K", "L", "R")
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# The 22 DejaVu faces of Debian's fonts-dejavu-core and fonts-dejavu-extra, pinned: the number of
# fonts changes every later random draw, so "whatever is installed" would change the data.
FONTS = (
    "DejaVuMathTeXGyre.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSans-ExtraLight.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSansCondensed-BoldOblique.ttf",
    "DejaVuSansCondensed-Oblique.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerifCondensed-Bold.ttf",
    "DejaVuSerifCondensed-BoldItalic.ttf",
    "DejaVuSerifCondensed-Italic.ttf",
    "DejaVuSerifCondensed.ttf",
)
SIZE, CANVAS = 28, 56


def fonts() -> list[Path]:
    """The pinned fonts; one line naming the packages when any is missing."""
    missing = [name for name in FONTS if not (FONT_DIR / name).is_file()]
    if missing:
        sys.exit(
            f"glyphs: {len(missing)} font(s) missing from {FONT_DIR}, e.g. {missing[0]}; "
            "install Debian's fonts-dejavu-core and fonts-dejavu-extra"
        )
    return [FONT_DIR / name for name in FONTS]


def load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def glyph(letter: str, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> Image.Image:
    """One glyph: drawn large at a random place, with a stray stroke beside it, rotated,
    shrunk to 28x28 and noised: hard enough that the norms' differences can show."""
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
    x = (CANVAS - (right - left)) / 2 - left + rng.uniform(-6, 6)
    y = (CANVAS - (bottom - top)) / 2 - top + rng.uniform(-6, 6)
    draw.text((x, y), letter, fill=int(rng.integers(140, 256)), font=font)
    ends = rng.uniform(0, CANVAS, 4)
    draw.line(list(ends), fill=int(rng.integers(60, 200)), width=int(rng.integers(1, 4)))
    canvas = canvas.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR)
    small = np.asarray(canvas.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.float64)
    noisy = small + rng.normal(0, rng.uniform(10, 40), small.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def render(out: Path, split: str, count: int) -> None:
    """`count` images of `split`, the classes in turn, each from the split's own generator."""
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    paths = fonts()
    for letter in CLASSES:
        (out / split / letter).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        letter = CLASSES[i % len(CLASSES)]
        font = load_font(paths[rng.integers(len(paths))], int(rng.integers(22, 44)))
        glyph(letter, font, rng).save(out / split / letter / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write train/ and test/ into")
    parser.add_argument("--train", type=int, default=8000, help="training images")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    args = parser.parse_args()
    render(args.out, "train", args.train)
    render(args.out, "test", args.test)
    print(f"wrote {args.train} + {args.test} glyphs of {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
