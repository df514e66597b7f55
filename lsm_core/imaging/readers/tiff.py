"""TIFF through tifffile: OME-TIFF, ImageJ hyperstacks and Zeiss LSM as microscope stacks (:class:`TiffReader`:
each series is a scene; one page is one plane; a contiguous uncompressed series is read at the plane's byte
offset; a series whose pages hold more than one plane, a rare volumetric page, is read whole, bounded), and
a plain TIFF as images (:class:`TiffPagesReader`: every page is its own image, its header read at once, its
pixels when asked for). A strip or tile stored as a picture (JPEG, PNG, WebP, JPEG 2000) has its own header
read before it is decoded (:func:`check_segments`)."""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.base import (
    Limits,
    PageInfo,
    Reader,
    Scene,
    StackReader,
    check_declared,
    check_pages,
    damaged,
    um_per_unit,
    yx_um,
)

# A TIFF's resolution tags at or above this size per pixel are a print resolution (72 dpi is 353 um)
PRINT_RESOLUTION_UM = 40.0


def _ome_images(xml: str | None) -> list[ET.Element]:
    if not xml:
        return []
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    return root.findall("{*}Image") or root.findall("Image")


def _ome_scene_metadata(image: ET.Element | None) -> tuple[str | None, list[str], tuple[float, float] | None]:
    if image is None:
        return None, [], None
    pixels = image.find("{*}Pixels")
    if pixels is None:
        pixels = image.find("Pixels")
    if pixels is None:
        return image.get("Name"), [], None
    channels = pixels.findall("{*}Channel") or pixels.findall("Channel")
    names = [ch.get("Name") or "" for ch in channels]
    size = None
    try:
        sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
        fx = um_per_unit(pixels.get("PhysicalSizeXUnit", "µm"))
        fy = um_per_unit(pixels.get("PhysicalSizeYUnit", "µm"))
        if sx is not None and sy is not None and fx is not None and fy is not None:
            size = yx_um(float(sy) * fy, float(sx) * fx)
    except ValueError:
        size = None
    return image.get("Name"), names, size


def tiff_resolution_um(page: Any, unit_um: float | None = None) -> tuple[float, float] | None:
    """Pixel size from XResolution / YResolution (pixels per unit); the unit from the ResolutionUnit tag
    unless given."""

    def value(tag: str) -> float | None:
        t = page.tags.get(tag)
        if t is None:
            return None
        v = t.value
        num, den = (v if isinstance(v, tuple) else (v, 1))[:2]
        return float(num) / float(den) if den else None

    xr, yr = value("XResolution"), value("YResolution")
    if not xr or not yr:
        return None
    if unit_um is None:
        unit_tag = page.tags.get("ResolutionUnit")
        code = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
        unit_um = {2: 25400.0, 3: 10000.0}.get(code)
    if unit_um is None:
        return None
    return yx_um(unit_um / yr, unit_um / xr)


def _count(value: Any) -> int:
    """A count as a header states it (a number, or its text), 1 when it states none or nonsense."""
    try:
        return max(1, int(float(value)))
    except (TypeError, ValueError, OverflowError):
        return 1


# what ImageJ's and LSM's metadata declare, by the tifffile attribute holding it: each dict (a count that
# check_declared knows -> the metadata's key) is checked at once
_DECLARED_COUNTS: dict[str, tuple[str, tuple[dict[str, str], ...]]] = {
    "ImageJ TIFF": (
        "imagej_metadata",
        ({"channels": "channels", "z_planes": "slices", "time_points": "frames"}, {"images": "images"}),
    ),
    "LSM": (
        "lsm_metadata",
        (
            {
                "channels": "DimensionChannels",
                "z_planes": "DimensionZ",
                "time_points": "DimensionTime",
                "positions": "DimensionP",
                "tiles": "DimensionM",
            },
        ),
    ),
}


def _check_tiff_metadata(tif: Any, fmt: str, ome: list[ET.Element], limits: Limits) -> None:
    """LsmError when a TIFF's own metadata declares more planes than LSM_MAX_PLANES allows (OME-XML: the images
    and each one's SizeC, SizeZ, SizeT; ImageJ: its channels, slices, frames and images; LSM: its dimensions),
    read before tifffile makes its series, which lists every declared plane (a 5 KB OME-TIFF declaring
    SizeT=100,000,000 took tifffile 12 s and 1.5 GB)."""
    what = f"the {fmt}"
    if fmt == "OME-TIFF":
        check_declared(limits, what, images=len(ome))
        total = 0
        for image in ome:
            pixels = image.find("{*}Pixels")
            if pixels is None:
                pixels = image.find("Pixels")
            if pixels is None:
                continue
            c, z, t = (_count(pixels.get(f"Size{axis}")) for axis in "CZT")
            check_declared(limits, what, channels=c, z_planes=z, time_points=t)
            total += c * z * t
        check_declared(limits, what, planes=total)
    elif fmt in _DECLARED_COUNTS:
        where, checks = _DECLARED_COUNTS[fmt]
        meta = getattr(tif, where) or {}
        for keys in checks:
            check_declared(limits, what, **{count: _count(meta.get(key)) for count, key in keys.items()})


# TIFF compressions whose segments (strips, tiles) are whole pictures (JPEG, PNG, WebP, JPEG 2000, ...): their
# decoders allocate what the picture's own header says, whatever the segment's size in the TIFF (tifffile
# checks the shape only afterwards): a 64 x 64 tile holding a 20,000 x 20,000 PNG decoded 400 MB. Each
# segment's header is read first (:func:`_segment_dims`); segments of the other compressions are decoded into a
# buffer of the segment's size (tifffile passes ``out``), which a longer stream cannot overflow.
_PICTURE_COMPRESSIONS = frozenset(tifffile.TIFF.IMAGE_COMPRESSIONS) - {48124, 65000, 65001, 65002}
_SEGMENT_HEAD = 1 << 16  # bytes of a segment read to find its picture's size


def _segment_dims(data: bytes) -> tuple[int, int] | None:
    """(height, width) a picture's header states: PNG (IHDR), JPEG (its SOF marker), JPEG 2000 (SIZ, as a
    codestream or inside a JP2 file), WebP (VP8, VP8L, VP8X); None when the header is none of these."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                pos += 2
                continue
            length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
                if pos + 9 > len(data):
                    return None
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return height, width
            pos += 2 + length
        return None
    siz = data.find(b"\xff\x4f\xff\x51")  # a JPEG 2000 codestream (alone, or in a JP2 file's jp2c box)
    if siz >= 0 and (siz == 0 or data[4:12] == b"jP  \r\n\x87\n") and siz + 24 <= len(data):
        x1, y1, x0, y0 = struct.unpack(">IIII", data[siz + 8 : siz + 24])  # Xsiz, Ysiz, XOsiz, YOsiz
        return max(0, y1 - y0), max(0, x1 - x0)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", data[26:30])
            return height & 0x3FFF, width & 0x3FFF
        if kind == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if kind == b"VP8X":
            return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    return None


def check_segments(page: Any) -> None:
    """LsmError unless every segment (strip or tile) of a TIFF page whose compression stores pictures (JPEG,
    PNG, WebP, JPEG 2000) states, in its own header, a size within the segment's: read before anything of it
    is decoded, so that a small tile cannot decode to a huge picture. Pages of other compressions pass (their
    segments are decoded into a buffer of their declared size)."""
    keyframe = page.keyframe if page.keyframe is not None else page
    compression = int(keyframe.compression)
    if compression not in _PICTURE_COMPRESSIONS:
        return
    try:
        name = tifffile.COMPRESSION(compression).name
    except ValueError:
        name = str(compression)
    if keyframe.is_tiled:
        tall, wide = int(keyframe.tilelength), int(keyframe.tilewidth)
    else:
        tall, wide = min(int(keyframe.rowsperstrip), int(keyframe.imagelength)), int(keyframe.imagewidth)
    fh = page.parent.filehandle
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        if not offset or not count:
            continue
        fh.seek(int(offset))
        dims = _segment_dims(bytes(fh.read(min(int(count), _SEGMENT_HEAD))))
        if dims is None:
            raise LsmError(
                f"a {'tile' if keyframe.is_tiled else 'strip'} of this TIFF is compressed as {name}, whose size "
                "could not be read from its header; save the image without compression, or with LZW, deflate or "
                "zstd"
            )
        if dims[0] > tall or dims[1] > wide:
            raise LsmError(
                f"a {'tile' if keyframe.is_tiled else 'strip'} of {tall} x {wide} pixels in this TIFF holds a "
                f"{name} picture of {dims[0]:,} x {dims[1]:,} pixels: the file is damaged or built to exhaust "
                "memory; refused"
            )


@dataclass(frozen=True)
class _TiffLayout:
    series: int
    outer_axes: str  # the axes of the series above the page, in file order
    outer_shape: tuple[int, ...]
    t_axes: tuple[int, ...]  # positions in outer_axes folded into T
    samples_are_channels: bool
    page_shape: tuple[int, ...]  # the keyframe's (squeezed) shape
    page_axes: str


class TiffReader(StackReader):
    """TIFF, OME-TIFF, ImageJ TIFF and LSM through tifffile: each series is a scene; one page is one plane."""

    library = "tifffile"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        super().__init__(path, name, limits)
        self._tif = tifffile.TiffFile(str(path))
        self._set_up()

    def _setup(self) -> None:
        tif = self._tif
        self.format = "OME-TIFF" if tif.is_ome else "ImageJ TIFF" if tif.is_imagej else "LSM" if tif.is_lsm else "TIFF"
        what = f"the {self.format}"
        check_pages(len(tif.pages), self.limits, what)
        ome = _ome_images(tif.ome_metadata) if tif.is_ome else []
        _check_tiff_metadata(tif, self.format, ome, self.limits)  # before tifffile lists every declared plane
        check_declared(self.limits, what, series=len(tif.series))
        total = 0
        for series in tif.series:  # every scene's counts, and the planes of all together, before anything is built
            if series.keyframe is None:
                continue
            dims = dict(zip(series.get_axes(False), (int(v) for v in series.get_shape(False))))
            rgb = dims.get("S", 1) in (3, 4) and int(getattr(series.keyframe, "photometric", 1)) in (2, 6)
            size_c = dims.get("C", 1) * (dims.get("S", 1) if dims.get("S", 1) > 2 and not rgb else 1)
            size_t = int(np.prod([n for a, n in dims.items() if a not in "CZYXS"], dtype=np.float64))
            check_declared(self.limits, what, channels=size_c, z_planes=dims.get("Z", 1), time_points=size_t)
            total += size_c * dims.get("Z", 1) * size_t
        check_declared(self.limits, what, planes=total)
        self._layouts: list[_TiffLayout] = []
        for number, series in enumerate(tif.series):
            if series.keyframe is None:
                continue
            axes = series.get_axes(False)
            shape = series.get_shape(False)
            dims = dict(zip(axes, shape))
            if "Y" not in dims or "X" not in dims:
                raise LsmError(f"series {number + 1} has axes {axes}, without Y and X")
            keyframe = series.keyframe
            samples = int(dims.get("S", 1))
            photometric = int(getattr(keyframe, "photometric", 1))
            rgb = samples in (3, 4) and photometric in (2, 6)  # RGB, YCbCr
            samples_are_channels = samples > 2 and not rgb
            outer_axes = "".join(a for a in axes if a not in "YXS")
            outer_shape = tuple(int(dims[a]) for a in outer_axes)
            t_axes = tuple(i for i, a in enumerate(outer_axes) if a not in "CZ")
            size_c = int(dims.get("C", 1)) * (samples if samples_are_channels else 1)
            size_t = int(np.prod([outer_shape[i] for i in t_axes])) if t_axes else 1
            layout = _TiffLayout(
                number,
                outer_axes,
                outer_shape,
                t_axes,
                samples_are_channels,
                tuple(int(v) for v in keyframe.shape),
                str(keyframe.axes),
            )
            self._layouts.append(layout)
            scene_name, names, size, origin = self._metadata(number, series, ome, keyframe)
            dtype = np.dtype(series.dtype)
            self._add_scene(
                scene_name or (series.name or None),
                (size_t, size_c, dims.get("Z", 1), dims["Y"], dims["X"]),
                np.dtype(dtype.newbyteorder("=")),
                names,
                size,
                origin,
                rgb=rgb,
                samples=samples if (rgb or samples_are_channels or samples == 2) else 1,
            )
        if not self.scenes:
            raise LsmError("the TIFF holds no readable image")

    def _metadata(
        self, index: int, series: Any, ome: list[ET.Element], keyframe: Any
    ) -> tuple[str | None, list[str], tuple[float, float] | None, str | None]:
        tif = self._tif
        if self.format == "OME-TIFF":
            name, names, size = _ome_scene_metadata(ome[index] if index < len(ome) else None)
            return name, names, size, "OME-XML PhysicalSizeX/Y"
        if self.format == "ImageJ TIFF":
            meta = tif.imagej_metadata or {}
            unit = meta.get("unit")
            factor = um_per_unit(unit)
            if factor is not None:
                return None, [], tiff_resolution_um(keyframe, factor), f"ImageJ unit {unit} + resolution tags"
        if self.format == "LSM":
            meta = tif.lsm_metadata or {}
            try:
                size = yx_um(float(meta["VoxelSizeY"]) * 1e6, float(meta["VoxelSizeX"]) * 1e6)
            except (KeyError, TypeError, ValueError):
                size = None
            names = list((meta.get("ChannelColors") or {}).get("ColorNames") or [])
            return None, names, size, "LSM VoxelSizeX/Y"
        unit_tag = keyframe.tags.get("ResolutionUnit")
        code = int(unit_tag.value) if unit_tag is not None else 2
        size = tiff_resolution_um(keyframe)
        if size is not None and max(size) >= PRINT_RESOLUTION_UM:
            size = None  # 72 / 96 dpi and the like: a print resolution, not a calibration
        return None, [], size, f"TIFF resolution tags ({'cm' if code == 3 else 'inch'})"

    def _unit_bytes(self, scene: int) -> tuple[int, str]:
        layout = self._layouts[scene]
        series = self._tif.series[layout.series]
        if self._page_mode(layout) == "whole":
            return int(series.nbytes), "this TIFF's planes cannot be read one at a time: the whole series"
        s = self.scenes[scene]
        if layout.samples_are_channels:
            return s.sizes["Y"] * s.sizes["X"] * s.samples * s.dtype.itemsize, "one page holds every channel"
        return 0, ""

    def _page_mode(self, layout: _TiffLayout) -> str:
        series = self._tif.series[layout.series]
        n_outer = int(np.prod(layout.outer_shape)) if layout.outer_shape else 1
        keyframe = series.keyframe
        plane_page = set(layout.page_axes) <= set("YXS")
        if plane_page and len(series.pages) == n_outer and all(p is not None for p in series.pages):
            return "page"
        if plane_page and series.dataoffset is not None and keyframe.compression == 1:
            return "offset"
        return "whole"

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        layout = self._layouts[scene.index]
        series = self._tif.series[layout.series]
        sample: int | None = None
        if layout.samples_are_channels:
            c, sample = divmod(c, scene.samples)
        t_index = np.unravel_index(t, tuple(layout.outer_shape[i] for i in layout.t_axes)) if layout.t_axes else ()
        index = []
        t_iter = iter(int(v) for v in t_index)
        for axis in layout.outer_axes:
            index.append(c if axis == "C" else z if axis == "Z" else next(t_iter))
        flat = int(np.ravel_multi_index(index, layout.outer_shape)) if index else 0
        mode = self._page_mode(layout)
        if mode == "page":
            page = series.pages[flat]
            if page is None:
                raise LsmError(f"plane t={t}, c={c}, z={z} is stored in another file of the series, which is missing")
            check_segments(page)
            arr = page.asarray()
        elif mode == "offset":
            keyframe = series.keyframe
            count = int(np.prod(layout.page_shape))
            dtype = np.dtype(series.dtype).newbyteorder(self._tif.byteorder)
            fh = self._tif.filehandle
            fh.seek(int(series.dataoffset or 0) + flat * count * dtype.itemsize)
            raw = fh.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise EOFError("the file ends before the plane's pixels")
            arr = np.frombuffer(raw, dtype).reshape(keyframe.shape).astype(dtype.newbyteorder("="))
        else:
            for each in series.pages:
                if each is not None:
                    check_segments(each)
            whole = series.asarray().reshape(series.get_shape(False))
            axes = series.get_axes(False)
            sel: list[Any] = []
            t_iter = iter(int(v) for v in t_index)
            for axis in axes:
                if axis in "YXS":
                    sel.append(slice(None))
                else:
                    sel.append(c if axis == "C" else z if axis == "Z" else next(t_iter))
            arr = whole[tuple(sel)]
            arr = np.ascontiguousarray(arr)
            del whole
            page_axes = "".join(a for a in axes if a in "YXS")
            if page_axes.startswith("S"):
                arr = np.moveaxis(arr, 0, -1)
            return arr if sample is None else arr[..., sample]
        if layout.page_axes.startswith("S") and arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)  # planar samples -> last
        if sample is not None:
            arr = arr[..., sample]
        return arr

    def _close(self) -> None:
        self._tif.close()


class TiffPagesReader(Reader):
    """A plain TIFF as images through tifffile: every page is its own image, every page's header at once, the
    pixels of one page when asked for."""

    format = "TIFF"

    def __init__(self, data: bytes | Path, limits: Limits, name: str = "") -> None:
        super().__init__(data if isinstance(data, Path) else None, name, limits)
        try:
            self._tif = tifffile.TiffFile(data if isinstance(data, Path) else io.BytesIO(data))
            n_pages = len(self._tif.pages)
        except Exception as exc:  # tifffile raises many types for broken headers
            raise LsmError(damaged(exc)) from None
        try:
            check_pages(n_pages, limits, "the TIFF")
        except LsmError:
            self._tif.close()
            raise
        if n_pages == 0:
            self._tif.close()
            raise LsmError("the TIFF holds no readable image (no page in it could be read)")
        for index in range(n_pages):
            try:
                self.pages.append(self._info(index))
            except LsmError as exc:
                self._errors[index] = str(exc)
                self.pages.append(PageInfo(index, 0, 0))
            except Exception as exc:
                self._errors[index] = damaged(exc)
                self.pages.append(PageInfo(index, 0, 0))

    def _info(self, index: int) -> PageInfo:
        page = self._tif.pages[index]
        shape = tuple(int(v) for v in page.shape)
        axes = page.axes
        samples = 1
        if len(shape) == 3 and "S" in axes:
            samples = shape[axes.index("S")]
            shape = tuple(v for i, v in enumerate(shape) if axes[i] != "S")
        if len(shape) != 2:
            raise LsmError(f"page {index + 1} is a {len(shape)}-D stack {tuple(page.shape)}; save each plane as a page")
        # LSM and ScanImage files give TiffFrames, which carry no tags of their own: read their keyframe's
        keyframe = page.keyframe
        assert keyframe is not None  # page.shape above already required it
        if page.dtype is None:
            raise LsmError(f"page {index + 1} stores its samples in a format this app cannot read")
        size = tiff_resolution_um(keyframe)
        square = size is not None and abs(size[0] - size[1]) <= 0.01 * size[1] and size[1] < PRINT_RESOLUTION_UM
        return PageInfo(
            index,
            shape[1],
            shape[0],
            samples,
            int(page.dtype.itemsize),
            int(keyframe.bitspersample),
            pixel_size_um=size[1] if size is not None and square else None,
            pixel_size_origin="TIFF resolution tags" if square else None,
        )

    def read(self, index: int) -> tuple[np.ndarray, int]:
        if index in self._errors:
            raise LsmError(self._errors[index])
        try:
            page = self._tif.pages[index]
            check_segments(page)  # a tile that is a picture larger than the tile is refused before decoding
            arr = page.asarray()
        except LsmError:
            raise
        except Exception as exc:
            raise LsmError(damaged(exc)) from None
        if "S" in page.axes and page.axes.index("S") == 0 and arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)  # planar RGB -> channels last
        return arr, self.pages[index].bits

    def _close(self) -> None:
        self._tif.close()
