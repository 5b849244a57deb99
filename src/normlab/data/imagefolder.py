"""`--dataset PATH`: a folder of images (or a `.tar.gz` of one) as a `Dataset`.

    PATH/train/<class>/*.png|*.jpg|*.jpeg
    PATH/test/<class>/*.png|*.jpg|*.jpeg

The folder may also sit one level down (an archive of `cifar10/train/...`). Classes are the
sub-folders of train/ (sorted); channels and size are detected:

- channels: 3 if any image has colour, else 1; grayscale images of a colour dataset are repeated
  to 3 channels and an alpha channel is dropped;
- size: every image is resized (bilinear, antialiased) to the most common size of the training
  split, so a few odd-sized images do not change the network.

Decoding a folder of small JPEGs is quick, but is still done only once: the decoded uint8
arrays go to an uncompressed `.npz` (no pickle) and the mean/std of the training split to a
`stats.json`, both in `--data-dir`/<name>-<digest>.normlab-cache/ (see `cache_dir`). It is keyed
on the data: for a folder, the list of image files with their sizes and modification times; for
an archive, its size and modification time. Any change rebuilds it; an archive is extracted
(once per change) with tarfile's "data" filter, which refuses absolute paths, `..` and links
that point outside the destination.

A `normlab.yaml` beside train/ and test/ may declare the folder's default augmentation
(`augment: crop+flip` for classes that survive a mirror); it is read with `yaml.safe_load` and
is part of the cache's key.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from normlab.atomic import write_atomic
from normlab.data.containers import Dataset, Split, channel_stats
from normlab.errors import NormlabError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 3  # bump when the cache layout or the decoding changes
SETTINGS_FILE = "normlab.yaml"


def folder_name(path: Path) -> str:
    """What a dataset path is called: its last part without `.tar.gz` / `.tgz` (a named
    dataset such as `mnist` is its own name)."""
    return path.name.removesuffix(".tar.gz").removesuffix(".tgz")


def is_archive(path: Path) -> bool:
    """A `.tar.gz` / `.tgz` file: what `--dataset PATH` accepts besides a folder."""
    return path.is_file() and path.name.lower().endswith((".tar.gz", ".tgz"))


def cache_dir(source: Path, data_dir: Path) -> Path:
    """`data_dir/<name>-<digest of the absolute path>.normlab-cache`.

    Under `--data-dir` rather than beside the data: data folders are often shared or read-only
    (and permission bits do not stop root), and one folder then holds every download and cache.
    """
    source = source.resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return Path(data_dir) / f"{source.name}-{digest}.normlab-cache"


def list_images(root: Path, split: str) -> dict[str, list[Path]]:
    """`{class: sorted image paths}` of one split; an error names a missing split folder."""
    folder = root / split
    if not folder.is_dir():
        raise NormlabError(
            f"{root} has no {split}/ folder; an image folder needs train/<class>/ and "
            "test/<class>/ sub-folders of PNG or JPEG files"
        )
    return {
        d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def find_root(path: Path) -> Path:
    """The folder holding train/ and test/: `path` itself or its only sub-folder."""
    if (path / "train").is_dir():
        return path
    subs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subs) == 1 and (subs[0] / "train").is_dir():
        return subs[0]
    return path


def declared(root: Path) -> dict:
    """The folder's normlab.yaml (`augment:` only), or {} when there is none."""
    path = root / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise NormlabError(f"{path} is not readable YAML ({first_line(exc, '')}); fix it") from None
    settings = {} if settings is None else settings
    if not isinstance(settings, dict) or set(settings) - {"augment"}:
        raise NormlabError(f"{path} may only set augment, e.g. 'augment: crop+flip'")
    if not isinstance(settings.get("augment", ""), str):
        raise NormlabError(f"{path}: augment must be text such as crop+flip")
    return settings


def folder_key(root: Path) -> str:
    """A digest of every image's relative path, size and modification time, and of the
    folder's normlab.yaml."""
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    settings = root / SETTINGS_FILE
    if settings.is_file():
        h.update(settings.read_bytes())
    for split in ("train", "test"):
        for cls, files in list_images(root, split).items():
            for f in files:
                st = f.stat()
                h.update(f"{split}/{cls}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def archive_key(archive: Path) -> str:
    st = archive.stat()
    return f"v{CACHE_VERSION}:{archive.name}:{st.st_size}:{st.st_mtime_ns}"


def extract(archive: Path, dest: Path, key: str) -> Path:
    """Extract `archive` into `dest` unless the extraction there is of this very archive.

    The archive is unpacked into a private folder beside `dest` and renamed into place, so two
    normlab processes loading the same archive into one `--data-dir` at once each get a whole
    extraction: the first rename wins, the other drops its own identical copy."""
    stamp = dest / ".normlab-key"

    def current() -> bool:
        return stamp.exists() and stamp.read_text() == key

    if current():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".extracting-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(private, filter="data")
        (private / stamp.name).write_text(key)
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(private, ignore_errors=True)
        raise NormlabError(
            f"cannot extract {archive} ({exc}); it must be a .tar.gz of a folder with train/ "
            "and test/, without absolute paths, '..' or links pointing outside it"
        ) from None
    if not current():
        shutil.rmtree(dest, ignore_errors=True)  # an extraction of an older archive, if any
        with contextlib.suppress(OSError):  # another process renamed its copy there first
            private.rename(dest)
    shutil.rmtree(private, ignore_errors=True)
    return dest


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def decode(path: Path) -> torch.Tensor:
    """One image file -> uint8 (C, H, W) with 1 or 3 channels; an error names the file.

    PIL rather than torchvision.io: torchvision 0.29 deprecates its decoders, and PIL converts
    every mode (palette, CMYK, 16-bit, alpha) to L or RGB in one call.
    """
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L" if im.mode in GRAY_MODES else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NormlabError(
            f"cannot read image {path} ({first_line(exc, type(exc).__name__)}); "
            "replace or delete it"
        ) from None
    image = torch.from_numpy(array.copy())
    return image[None] if image.ndim == 2 else image.permute(2, 0, 1)


def to_common(images: list[torch.Tensor], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Stack images as (N, channels, *size): gray repeated to colour, odd sizes resized."""
    out = torch.empty(len(images), channels, *size, dtype=torch.uint8)
    for i, im in enumerate(images):
        if im.shape[0] != channels:
            im = im.expand(channels, -1, -1)
        if tuple(im.shape[1:]) != size:
            im = (
                F.interpolate(
                    im[None].float(),
                    size=size,
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )[0]
                .round_()
                .clamp_(0, 255)
            )
        out[i] = im
    return out


def decode_folder(root: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode both splits; checks the folder makes a classification problem."""
    train_files, test_files = list_images(root, "train"), list_images(root, "test")
    classes = [c for c, files in train_files.items() if files]
    if not classes:
        raise NormlabError(
            f"{root}/train has no images; put PNG or JPEG files in train/<class>/ folders"
        )
    if len(classes) < 2:
        raise NormlabError(
            f"{root}/train has one class only ({classes[0]}); a classifier needs at least two "
            "train/<class>/ folders"
        )
    unknown = sorted(c for c, files in test_files.items() if files and c not in classes)
    if unknown:
        raise NormlabError(
            f"{root}/test has classes not in train/ ({', '.join(unknown)}); use the same "
            "class folder names in both"
        )
    if not any(test_files.values()):
        raise NormlabError(f"{root}/test has no images; put PNG or JPEG files in test/<class>/")
    decoded = {}
    for split, files in (("train", train_files), ("test", test_files)):
        pairs = [(decode(f), classes.index(c)) for c in classes for f in files.get(c, [])]
        decoded[split] = pairs
    every = [im for pairs in decoded.values() for im, _ in pairs]
    channels = 3 if any(im.shape[0] == 3 for im in every) else 1
    size = Counter(tuple(im.shape[1:]) for im, _ in decoded["train"]).most_common(1)[0][0]
    arrays = {}
    for split, pairs in decoded.items():
        # A fixed shuffle, so that --limit-train/--limit-test (the first N) take every class.
        order = np.random.default_rng(0).permutation(len(pairs))
        arrays[f"{split}_images"] = to_common([pairs[i][0] for i in order], channels, size).numpy()
        arrays[f"{split}_labels"] = np.array([pairs[i][1] for i in order], dtype=np.int64)
    return arrays, classes


def read_stats(path: Path) -> dict:
    """The cache's stats.json, or {} when it is missing or damaged (the cache is then rebuilt)."""
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


def load_image_folder(path: Path, data_dir: Path) -> Dataset:
    """An image folder or `.tar.gz` of one, decoded once and cached (see the module docstring)."""
    cache = cache_dir(path, data_dir)
    archive = is_archive(path)
    key = archive_key(path) if archive else folder_key(find_root(path))
    stats_file, arrays_file = cache / "stats.json", cache / "images.npz"
    stats = read_stats(stats_file)
    if stats.get("key") == key and arrays_file.exists():
        with np.load(arrays_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        root = find_root(extract(path, cache / "extracted", key) if archive else path)
        settings = declared(root)  # a bad normlab.yaml fails before the decoding, not after
        arrays, classes = decode_folder(root)
        mean, std = channel_stats(torch.from_numpy(arrays["train_images"]))
        stats = {"key": key, "classes": classes, "mean": mean, "std": std, **settings}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(arrays_file, buffer.getvalue())
        write_atomic(stats_file, (json.dumps(stats, indent=2) + "\n").encode())  # last: commits
    splits = [
        Split(torch.from_numpy(arrays[f"{s}_images"]), torch.from_numpy(arrays[f"{s}_labels"]))
        for s in ("train", "test")
    ]
    return Dataset(
        folder_name(path.resolve()),
        splits[0],
        splits[1],
        stats["classes"],
        tuple(stats["mean"]),
        tuple(stats["std"]),
        stats.get("augment"),
    )
