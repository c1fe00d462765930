"""The hostile inbox: every kind of input the issue lists, written into a temp folder on demand.

Each `Case` is one file and what the pipeline must make of it: a complete
scene, a rejection by the gate's validation, a failure at a named stage, or
nothing at all (not an image to process). The reason recorded for a scene
that does not complete must contain `reason`. Pixels come from the real
sample images (crops, casts, re-encodings, truncations), so a case that must
complete exercises the model on real content; only the inputs that are bad
on purpose (random bytes, text, forged headers) are synthetic.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp
from rasterio.windows import Window

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "data" / "inbox"
BAD = REPO_ROOT / "tile_assets_tests" / "data" / "bad"
NAIP = SAMPLES / "naip_2018.tif"
"""934 x 724, R, G, B, NIR uint8, EPSG:26914: the pixels of most generated cases."""
PHOTO = SAMPLES / "no_geo_photo.jpg"
GOOD = ("rgb-byte-tenth.tif", "colorado_aerial_cl1.tif")
"""Sample images put in the hostile inbox untouched: they must complete whatever else is there."""

Outcome = Literal["complete", "rejected", "failed", "ignored"]
Builder = Callable[[Path], None]
RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
CROP = Window(300, 200, 200, 150)
"""A part of the NAIP scene with fields, trees and a road."""
BOMB_SIDE = 100_000


@dataclass(frozen=True)
class Case:
    """One file of the hostile inbox and the outcome it must have."""

    name: str
    """Path under the inbox (may contain folders)."""
    what: str
    """What the file is, for the reliability table."""
    build: Builder
    outcome: Outcome
    reason: str = ""
    """A substring of the recorded reason (scene failed or rejected) or of the ignore reason."""
    stage: str = ""
    """The asset that failed, for outcome "failed"."""


@cache
def naip_crop(window: Window = CROP) -> np.ndarray:
    """(4, rows, cols) uint8 R, G, B, NIR from the NAIP sample."""
    with rasterio.open(NAIP) as src:
        return src.read(window=window)


@cache
def naip_geo(window: Window = CROP) -> tuple[rasterio.crs.CRS, Affine]:
    """CRS and transform of `window` in the NAIP scene."""
    with rasterio.open(NAIP) as src:
        return src.crs, src.window_transform(window)


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    georeferenced: bool = True,
    transform: Affine | None = None,
    nodata: float | None = None,
    colorinterp: Iterable[ColorInterp] | None = None,
    gcps: list[GroundControlPoint] | None = None,
) -> None:
    """A tiled, deflated GeoTIFF of `data` (bands, rows, cols), in NAIP's CRS unless told otherwise."""
    count, height, width = data.shape
    profile: dict[str, object] = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype.name,
        "nodata": nodata, "compress": "deflate", "photometric": "MINISBLACK",
    }
    if width >= 16 and height >= 16:
        profile.update(tiled=True, blockxsize=16 * (width // 16 or 1), blockysize=16)
    crs, window_transform = naip_geo()
    if georeferenced and gcps is None:
        profile.update(crs=crs, transform=transform or window_transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colorinterp is not None:
            dst.colorinterp = list(colorinterp)
        if gcps is not None:
            dst.gcps = (gcps, crs)


def copy_of(source: Path) -> Builder:
    return lambda path: shutil.copyfile(source, path)


def bytes_of(data: bytes) -> Builder:
    return lambda path: path.write_bytes(data)


def truncated(source: Path, fraction: float) -> Builder:
    """The first `fraction` of a real file, as an interrupted upload leaves it."""

    def build(path: Path) -> None:
        data = source.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return build


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(7).bytes(50_000))


def sparse_bomb_tif(path: Path) -> None:
    """A 100,000 x 100,000 GeoTIFF whose tiles are all absent: about 80 kB on disk."""
    profile = {
        "driver": "GTiff", "width": BOMB_SIDE, "height": BOMB_SIDE, "count": 1, "dtype": "uint8",
        "tiled": True, "blockxsize": 1024, "blockysize": 1024, "compress": "deflate", "sparse_ok": True,
    }
    with rasterio.open(path, "w", **profile):
        pass


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path) -> None:
    """A 74-byte PNG whose header declares 100,000 x 100,000 grey pixels (the classic image bomb)."""
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + _png_chunk(b"IEND", b"")
    )


def rgb(path: Path, window: Window = CROP) -> None:
    write_tif(path, naip_crop(window)[:3], colorinterp=RGB)


def one_pixel(path: Path) -> None:
    rgb(path, Window(400, 300, 1, 1))


def smaller_than_a_tile(path: Path) -> None:
    rgb(path, Window(400, 300, 100, 80))


def uint16(path: Path) -> None:
    write_tif(path, naip_crop()[:3].astype(np.uint16) * 257, colorinterp=RGB)


def int16(path: Path) -> None:
    write_tif(path, naip_crop()[:3].astype(np.int16) * 10 - 1000, colorinterp=RGB)


def float32(path: Path) -> None:
    write_tif(path, naip_crop()[:3].astype(np.float32) / 255, colorinterp=RGB)


def float32_nan_nodata(path: Path) -> None:
    """Reflectance with nodata = NaN over the left quarter, as a reprojected float scene has."""
    data = naip_crop()[:3].astype(np.float32) / 255
    data[:, :, : data.shape[2] // 4] = np.nan
    write_tif(path, data, nodata=float("nan"), colorinterp=RGB)


def bands(count: int) -> Builder:
    """`count` bands: the NAIP bands, then simple band ratios of them, unlabelled after RGB."""

    def build(path: Path) -> None:
        crop = naip_crop().astype(np.float32)
        extra = [(crop[3] - crop[i % 3]) / (crop[3] + crop[i % 3] + 1) * 100 + 100 for i in range(count)]
        stack = np.concatenate([crop, np.stack(extra)])[:count].clip(0, 255).astype(np.uint8)
        names = [*RGB, *[ColorInterp.undefined] * (count - 3)] if count >= 3 else None
        write_tif(path, stack, colorinterp=names)

    return build


def complex64(path: Path) -> None:
    crop = naip_crop()[0].astype(np.float32)
    write_tif(path, (crop + 1j * crop).astype(np.complex64)[np.newaxis])


def gcp_georeferenced(path: Path) -> None:
    """No geotransform, four GCPs at the crop's corners (as raw satellite products come)."""
    _, transform = naip_geo()
    rows, cols = CROP.height, CROP.width
    corners = [(0, 0), (0, cols), (rows, 0), (rows, cols)]
    gcps = [GroundControlPoint(row=r, col=c, x=(transform * (c, r))[0], y=(transform * (c, r))[1]) for r, c in corners]
    write_tif(path, naip_crop()[:3], gcps=gcps, colorinterp=RGB)


def rotated(path: Path) -> None:
    """A geotransform rotated by 30 degrees about the crop's origin."""
    _, transform = naip_geo()
    write_tif(path, naip_crop()[:3], transform=transform * Affine.rotation(30), colorinterp=RGB)


def exif_rotated_jpeg(path: Path) -> None:
    """A real photo crop stored landscape with EXIF Orientation 6 (show rotated 90 degrees clockwise)."""
    with Image.open(PHOTO) as photo:
        crop = photo.crop((600, 700, 1000, 1000)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=90, exif=exif)
    path.write_bytes(buf.getvalue())


def text(path: Path) -> None:
    path.write_text("This is a shopping list, not a photograph.\n" * 40)


CASES: tuple[Case, ...] = (
    Case("zero-byte.tif", "0-byte file", bytes_of(b""), "ignored", "zero-byte object"),
    Case(".tif", "a file named just `.tif` (no stem, so no suffix)", bytes_of(b"x"), "ignored", "not an image suffix"),
    Case("truncated.tif", "GeoTIFF cut at 60 % (interrupted upload)", truncated(NAIP, 0.6), "failed",
         "IReadBlock failed", "source_images"),
    Case("truncated.jpg", "JPEG cut in half", truncated(PHOTO, 0.5), "failed",
         "Premature end of JPEG file", "source_images"),
    Case("corrupt.tif", "GeoTIFF with corrupt tile data (bundled)", copy_of(BAD / "corrupt.tif"), "failed",
         "IReadBlock failed", "source_images"),
    Case("random-bytes.tif", "50 kB of random bytes named .tif", random_bytes, "rejected",
         "not a recognized image format"),
    Case("text-named.jpg", "a text file named .jpg", text, "rejected", "not a recognized image format"),
    Case("png-named.tif", "a PNG named .tif", copy_of(SAMPLES / "page_text.png"), "complete"),
    Case("bomb-100000x100000.tif", "sparse GeoTIFF declaring 100,000 x 100,000 (80 kB)", sparse_bomb_tif,
         "rejected", "decompression bomb"),
    Case("bomb-100000x100000.png", "74-byte PNG declaring 100,000 x 100,000", png_bomb, "rejected",
         "decompression bomb"),
    Case("one-pixel.tif", "1 x 1 image", one_pixel, "complete"),
    Case("smaller-than-a-tile.tif", "100 x 80 image (tiles are 256)", smaller_than_a_tile, "complete"),
    Case("all-nodata.tif", "every pixel nodata (bundled)", copy_of(BAD / "all-nodata.tif"), "failed",
         "every pixel is nodata", "tiles"),
    Case("float32-nan-nodata.tif", "float32, nodata NaN over a quarter", float32_nan_nodata, "complete"),
    Case("uint16.tif", "uint16 RGB", uint16, "complete"),
    Case("int16.tif", "int16 RGB with negative values", int16, "complete"),
    Case("float32.tif", "float32 RGB reflectance", float32, "complete"),
    Case("one-band.tif", "1 band", bands(1), "complete"),
    Case("two-band.tif", "2 bands", bands(2), "complete"),
    Case("six-band.tif", "6 bands (RGB, NIR, 2 ratios)", bands(6), "complete"),
    Case("seventeen-band.tif", "17 bands", bands(17), "rejected", "17 data bands"),
    Case("complex64.tif", "complex64 data", complex64, "rejected", "data type complex64 not supported"),
    Case("gcps.tif", "georeferenced by GCPs only", gcp_georeferenced, "complete"),
    Case("rotated.tif", "geotransform rotated by 30 degrees", rotated, "complete"),
    Case("exif-rotated.jpg", "JPEG with EXIF Orientation 6", exif_rotated_jpeg, "complete"),
    Case("with space, and comma.tif", "key with spaces and commas", rgb, "complete"),
    Case("ünïcødé 画像.tif", "key with unicode", rgb, "complete"),
    Case("line\nbreak.tif", "key with a newline", rgb, "complete"),
    Case("a%2F..%2Fescape.tif", "key with URL-escaped `/../`", rgb, "complete"),
    Case("same/first.tif", "the same image under two keys (1)", copy_of(SAMPLES / "colorado_aerial_cl1.tif"),
         "complete"),
    Case("same/second.tif", "the same image under two keys (2)", copy_of(SAMPLES / "colorado_aerial_cl1.tif"),
         "complete"),
    *(Case(name, "sample image", copy_of(SAMPLES / name), "complete") for name in GOOD),
)


def build_corpus(inbox: Path, cases: Iterable[Case] = CASES) -> dict[str, Path]:
    """Write every case under `inbox`; returns case name -> file path."""
    paths = {}
    for case in cases:
        path = inbox / case.name
        path.parent.mkdir(parents=True, exist_ok=True)
        case.build(path)
        paths[case.name] = path
    return paths
