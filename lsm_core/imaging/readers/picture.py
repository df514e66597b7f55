"""PNG and JPEG through Pillow (:class:`PictureReader`): one page, one scene, one plane, the whole picture; the
camera's orientation (EXIF) is applied; colour is one channel (its luminance)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.base import (
    Limits,
    PageInfo,
    Reader,
    Scene,
    check_file_size,
    damaged,
    library_version,
    tczyx,
)

# The pixel limit is LSM_MAX_IMAGE_PIXELS, checked from the header before decoding (base.check_pixels);
# Pillow's own, lower, built-in limit would otherwise override a lab's raised setting.
Image.MAX_IMAGE_PIXELS = None

_PIL_MODES = {  # mode -> (samples, bytes per sample) as decoded (palette and bilevel images are converted)
    "1": (1, 1),
    "L": (1, 1),
    "P": (4, 1),
    "LA": (2, 1),
    "PA": (4, 1),
    "RGB": (3, 1),
    "RGBA": (4, 1),
    "RGBX": (4, 1),
    "CMYK": (3, 1),
    "YCbCr": (3, 1),
    "LAB": (3, 1),
    "HSV": (3, 1),
    "I": (1, 4),
    "F": (1, 4),
    "I;16": (1, 2),
    "I;16L": (1, 2),
    "I;16B": (1, 2),
    "I;16N": (1, 2),
}


class PictureReader(Reader):
    """PNG and JPEG through Pillow: one page (its header read at once); the camera's orientation (EXIF) is
    applied when it is decoded. Given bytes (:func:`readers.open_image`) it lists its page; opened as a
    microscope file (:meth:`from_path`) also its one scene of one plane, colour being one channel."""

    _DTYPES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32}

    def __init__(self, data: bytes, name: str = "", limits: Limits | None = None, path: Path | None = None) -> None:
        super().__init__(path, name, limits or Limits())
        self._data = data
        try:
            with Image.open(io.BytesIO(data)) as im:
                self.format = "PNG" if im.format == "PNG" else "JPEG"
                samples, itemsize = _PIL_MODES.get(im.mode, (4, 4))
                bits = 16 if im.mode.startswith("I;16") else 8 * itemsize
                self.pages = [PageInfo(0, im.width, im.height, samples, itemsize, bits)]
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise LsmError(damaged(exc)) from None

    @classmethod
    def from_path(cls, path: Path, name: str, limits: Limits, detail: Any = None) -> PictureReader:
        """A PNG or JPEG file on disk (read into memory whole: LSM_MAX_FILE_BYTES first), with its scene."""
        check_file_size(path.stat().st_size, limits)
        reader = cls(path.read_bytes(), name, limits, path)
        reader.reader = library_version("pillow")
        with Image.open(io.BytesIO(reader._data)) as im:
            mode = im.mode
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        info = reader.pages[0]
        height, width = info.height, info.width
        if orientation in (5, 6, 7, 8):  # the camera's orientation turns the picture by 90 degrees
            height, width = width, height
        dtype = np.dtype(cls._DTYPES.get(mode, np.float32 if mode == "F" else np.uint8))
        rgb = info.samples in (3, 4)
        reader.scenes.append(
            Scene(
                index=0,
                name=None,
                sizes=tczyx(1, 1, 1, height, width),
                dtype=dtype,
                channels=[""],
                rgb=rgb,
                samples=info.samples,
            )
        )
        return reader

    def read(self, index: int) -> tuple[np.ndarray, int]:
        try:
            with Image.open(io.BytesIO(self._data)) as opened:
                im: Image.Image = opened  # exif_transpose and convert return plain Images
                if im.format == "JPEG" or "exif" in im.info:
                    im = ImageOps.exif_transpose(im)  # applies the camera's orientation
                mode = im.mode
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("L" if mode == "1" else "RGB")
                arr = np.asarray(im)
        except Image.DecompressionBombError as exc:
            raise LsmError(f"the image is too large to decode safely ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise LsmError(damaged(exc)) from None
        bits = 16 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) <= 65535) else None
        if mode == "I" and bits == 16:
            arr = arr.astype(np.uint16)
        if arr.dtype == np.uint8:
            bits = 8
        return arr, bits or arr.dtype.itemsize * 8

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        arr, _bits = self.read(0)  # EXIF orientation applied
        return arr
