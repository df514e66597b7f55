"""Olympus FluoView OIB and OIF through oiffile (:class:`OifReader`): one plane is one TIFF file of the
compound document (OIB) or folder (OIF). Olympus OIR files are recognised but not read: no OIR reader is
installable here (the ``oirfile`` package is not on our package mirror); the message says to export the
file as OME-TIFF."""

from __future__ import annotations

import struct
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tifffile

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.base import Limits, Scene, StackReader, check_declared, um_per_unit, yx_um
from lsm_core.imaging.readers.tiff import check_segments


def is_oib(path: Path, limits: Limits) -> bool:
    """Whether an OLE compound document is an Olympus OIB: it holds an OibInfo.txt stream (its directory,
    which may lie anywhere in the file, is read by oiffile's compound-file reader, once
    :func:`_check_compound` has found that reading it ends)."""
    from oiffile import CompoundFile

    try:
        _check_compound(path, limits)
        with CompoundFile(str(path)) as compound:
            names = [str(n).replace("\\", "/") for n in compound.files()]
    except LsmError:
        raise
    except Exception as exc:  # a damaged compound document
        raise LsmError(f"this OLE compound document (an Olympus OIB?) could not be read ({exc})") from None
    return any(n == "OibInfo.txt" or n.endswith("/OibInfo.txt") for n in names)


_OLE_END = 0xFFFFFFFE  # the end of a sector chain; 0xFFFFFFFA and above are marks, not sectors


def _ole_cycles(table: np.ndarray) -> bool:
    """Whether following a FAT (or mini FAT) from some sector never ends: each entry names the next sector,
    or is a mark. By pointer doubling, every chain followed 2**k >= len(table) steps at once, in NumPy."""
    n = len(table)
    jump = np.where(table < n, table, n).astype(np.int64)
    jump = np.append(jump, n)  # n: the end, whatever the mark
    for _ in range(max(1, int(n).bit_length())):
        jump = jump[jump]
    return bool((jump[:n] != n).any())


def _check_compound(path: Path, limits: Limits) -> None:
    """An OLE compound document (an OIB) checked from its own bytes before oiffile reads it, which follows
    each sector chain to its end mark and reads as many FAT, DIFAT and mini FAT sectors as the header says: a
    chain that loops (a 10 KB file whose directory chain pointed at itself grew without end) or counts beyond
    the file would never stop. ValueError unless the FAT and the mini FAT hold no loop and their sizes fit the
    file; LsmError when the directory holds more entries (one per plane and a few more) than LSM_MAX_PLANES
    allows before oiffile makes an object of each."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(512)
        if len(head) < 512:
            raise ValueError("its header is cut short")
        major, _, shift = struct.unpack_from("<HHH", head, 26)
        fat_len, dir_start, _, _, minifat_start, minifat_len, difat_start, difat_len = struct.unpack_from(
            "<8I", head, 44
        )
        if shift not in (9, 12):
            raise ValueError(f"its sectors are 2**{shift} bytes")
        sector_bytes = 1 << shift
        per = sector_bytes // 4
        n = -(-max(0, size - sector_bytes) // sector_bytes)  # sectors in the file
        if fat_len > -(-n // per) + 1 or difat_len > -(-fat_len // (per - 1)) + 1:
            raise ValueError(f"it declares {fat_len:,} FAT and {difat_len:,} DIFAT sectors for {n:,} sectors")

        def sector(i: int) -> bytes:
            if not 0 <= i < n:
                raise ValueError(f"a chain leaves the file (sector {i:,} of {n:,})")
            fh.seek(sector_bytes * (i + 1))
            data = fh.read(sector_bytes)
            return data + bytes(sector_bytes - len(data))

        difat = list(struct.unpack_from("<109I", head, 76))
        following = difat_start
        for _ in range(difat_len):
            words = struct.unpack(f"<{per}I", sector(following))
            difat.extend(words[:-1])
            following = words[-1]
        fat = np.frombuffer(b"".join(sector(i) for i in difat[:fat_len]), "<u4")
        if _ole_cycles(fat):
            raise ValueError("a chain of its FAT loops")

        def chain(start: int, most: int) -> list[int]:
            found: list[int] = []
            while start != _OLE_END and len(found) < most:
                if not 0 <= start < len(fat):
                    raise ValueError(f"a chain leaves the FAT (sector {start:,})")
                found.append(start)
                start = int(fat[start])
            return found

        per_sector = sector_bytes // 128
        allowed = limits.max_planes + 1024  # an entry per plane; the settings, storages and a root besides
        directory = chain(dir_start, -(-allowed // per_sector) + 1)
        if len(directory) * per_sector > allowed:
            raise LsmError(
                f"this compound document holds more than {allowed:,} directory entries (an OIB has one per "
                f"plane, and a few more); the limit is {limits.max_planes:,} planes (LSM_MAX_PLANES)"
            )
        root = sector(directory[0]) if directory else bytes(128)
        mini_size = struct.unpack_from("<I" if major == 3 else "<Q", root, 120)[0]
        if mini_size > size:
            raise ValueError(f"its mini stream declares {mini_size:,} bytes in a file of {size:,}")
        mini_sectors = -(-mini_size // 64)
        if minifat_len > -(-mini_sectors // per) + 1:
            raise ValueError(f"it declares {minifat_len:,} mini FAT sectors for {mini_size:,} bytes of mini stream")
        minifat = np.frombuffer(b"".join(sector(i) for i in chain(minifat_start, minifat_len)), "<u4")
        if _ole_cycles(minifat):
            raise ValueError("a chain of its mini FAT loops")


class OifReader(StackReader):
    """Olympus FluoView OIB (one compound file) and OIF (a .oif file beside its .oif.files folder) through
    oiffile: one scene; each plane is one TIFF file inside, read alone. An OIF must keep its .oif name, which
    is how the reader finds its folder.

    Bounded before a plane is listed: an OIB's compound document (:func:`_check_compound`, when the format is
    told), the number of TIFF files, and the channels, z planes and time points their names declare
    (LSM_MAX_PLANES). A plane's TIFF must hold a first page of the scene's size and samples, and only that page
    is decoded: each strip or tile into a buffer of its declared size (tifffile), a strip or tile stored as a
    picture (JPEG, PNG, ...) once its header is found no larger than the tile (:func:`check_segments`)."""

    library = "oiffile"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None, fmt: str = "OIB") -> None:
        import oiffile

        super().__init__(path, name, limits)
        self.format = fmt
        if fmt == "OIF" and path.suffix.lower() != ".oif":
            raise LsmError("an Olympus OIF main file must keep its .oif name beside its .oif.files folder")
        self._oif = oiffile.OifFile(str(path))
        self._set_up()

    def _setup(self) -> None:
        oif = self._oif
        groups: dict[str, list[str]] = {}
        for count, filename in enumerate(oif.glob("*.tif"), start=1):
            if count > self.limits.max_planes:
                raise LsmError(
                    f"{self.name} holds more than {self.limits.max_planes:,} TIFF files (one per plane); the limit "
                    f"is {self.limits.max_planes:,} planes (LSM_MAX_PLANES)"
                )
            key = "".join(ch for ch in PurePosixPath(filename.replace("\\", "/")).name[:-4] if ch.isalpha())
            groups.setdefault(key, []).append(filename)
        if not groups:
            raise LsmError("the file holds no image planes (no TIFF inside)")
        largest: list[str] = max(groups.values(), key=lambda names: len(names))
        files = list(tifffile.natural_sorted(largest))
        if len(files) > 1:
            dims, shape, indices, parsed = tifffile.parse_filenames(files, pattern="axes")
            files = list(parsed)
            axes = "".join(tifffile.TIFF.AXES_CODES.get(d.lower(), d[0].upper()) for d in dims)
        else:
            axes, shape, indices = "", (), [()]
        self._axes = axes
        self._shape = tuple(int(v) for v in shape)
        dims_map = dict(zip(axes, self._shape))
        self._t_axes = [a for a in axes if a not in "CZ"]
        self._t_shape = tuple(dims_map[a] for a in self._t_axes)
        size_t = int(np.prod(self._t_shape, dtype=object))  # Python integers: no overflow
        n_c = int(dims_map.get("C", 1))
        check_declared(self.limits, self.name, time_points=size_t, channels=n_c, z_planes=dims_map.get("Z", 1))
        self._index = {tuple(int(v) for v in ix): f for ix, f in zip(indices, files)}
        with oif.open_file(files[0]) as fh, tifffile.TiffFile(fh) as tif:
            page = tif.pages.first
            height, width = int(page.imagelength), int(page.imagewidth)
            dtype = np.dtype(page.dtype)
            samples = int(page.samplesperpixel)
        main = oif.mainfile
        names = [str((main.get(f"Channel {i + 1} Parameters") or {}).get("DyeName", "")) for i in range(n_c)]
        size = None
        origin = None
        ref = main.get("Reference Image Parameter") or {}
        try:
            factor_x = um_per_unit(ref.get("WidthUnit", "um"))
            factor_y = um_per_unit(ref.get("HeightUnit", ref.get("WidthUnit", "um")))
            if factor_x and factor_y:
                size = yx_um(float(ref["HeightConvertValue"]) * factor_y, float(ref["WidthConvertValue"]) * factor_x)
                origin = "OIF Reference Image Parameter (Width/HeightConvertValue)"
        except (KeyError, TypeError, ValueError):
            size = None
        self._add_scene(
            None, (size_t, n_c, dims_map.get("Z", 1), height, width), dtype, names, size, origin, samples=samples
        )

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        t_index = iter(int(v) for v in np.unravel_index(t, self._t_shape)) if self._t_shape else iter(())
        key = tuple(c if a == "C" else z if a == "Z" else next(t_index) for a in self._axes)
        if key not in self._index:
            raise LsmError(f"the plane t={t}, c={c}, z={z} is missing from the file")
        with self._oif.open_file(self._index[key]) as fh, tifffile.TiffFile(fh) as tif:
            page = tif.pages.first
            stored = (int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel))
            if stored != (scene.sizes["Y"], scene.sizes["X"], scene.samples) or np.dtype(page.dtype) != scene.dtype:
                raise LsmError(
                    f"the plane t={t}, c={c}, z={z} is stored as {stored[1]} x {stored[0]} pixels of "
                    f"{stored[2]} {page.dtype} sample(s) where the first plane is {scene.sizes['X']} x "
                    f"{scene.sizes['Y']} of {scene.samples} {scene.dtype}; the file is inconsistent"
                )
            check_segments(page)  # a JPEG (PNG, ...) tile whose picture is larger than the tile: refused
            return np.asarray(page.asarray())

    def _close(self) -> None:
        self._oif.close()


def open_oib(path: Path, name: str, limits: Limits, detail: Any = None) -> StackReader:
    return OifReader(path, name, limits, detail, "OIB")


def open_oif(path: Path, name: str, limits: Limits, detail: Any = None) -> StackReader:
    return OifReader(path, name, limits, detail, "OIF")
