"""Nikon ND2 through nd2 (:class:`Nd2Reader`): one frame at a time; a frame holds every channel of one
(position, time, z), so a plane costs C planes of memory, bounded."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.base import Limits, Scene, StackReader, check_declared, megabytes, pieces, yx_um


def _j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of a JPEG 2000 stream from its SIZ marker (in its first 4 KB), or None."""
    at = data.find(b"\xff\x4f\xff\x51", 0, 4096)
    if at < 0 or len(data) < at + 42:
        return None
    x, y, x0, y0 = struct.unpack_from(">IIII", data, at + 8)
    (components,) = struct.unpack_from(">H", data, at + 40)
    return max(0, x - x0), max(0, y - y0), components


class Nd2Reader(StackReader):
    """Nikon ND2 through nd2: each XY position (P) is a scene. The reader's unit is a frame, which holds
    every channel of one (position, time, z): one plane costs C planes of memory, checked.

    The positions, time points (and any other loop), channels and z planes the experiment declares are
    checked (LSM_MAX_PLANES) before a frame index is built. nd2 decompresses a compressed frame whole (zlib,
    or JPEG 2000 in a legacy file): the frame is first measured here, streamed, against its declared size."""

    format = "ND2"
    library = "nd2"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        import nd2

        super().__init__(path, name, limits)
        self._nd2 = nd2.ND2File(str(path))
        try:
            self._fh = path.open("rb")  # compressed frames are measured here before nd2 reads them
        except OSError:
            self._nd2.close()
            raise
        self._set_up()

    def _setup(self) -> None:
        f = self._nd2
        sizes = dict(f.sizes)
        declared = {k: int(v) for k, v in sizes.items() if k not in ("C", "Y", "X", "S")}
        others = int(np.prod([v for k, v in declared.items() if k not in ("P", "T", "Z")], dtype=object))
        check_declared(
            self.limits,
            self.name,
            scenes=declared.get("P", 1),
            time_points=declared.get("T", 1) * others,
            channels=int(sizes.get("C", 1)),
            z_planes=declared.get("Z", 1),
        )
        loops = [dict(ix) for ix in f.loop_indices]
        self._loop_keys = sorted({k for ix in loops for k in ix})
        self._frames = {tuple(ix.get(k, 0) for k in self._loop_keys): i for i, ix in enumerate(loops)}
        unknown = [k for k in self._loop_keys if k not in ("P", "T", "Z")]
        self._t_axes = ["T", *unknown] if "T" in self._loop_keys else unknown
        self._t_shape = tuple(max(int(ix.get(k, 0)) for ix in loops) + 1 for k in self._t_axes) if loops else ()
        size_t = int(np.prod(self._t_shape)) if self._t_shape else 1
        n_c = int(sizes.get("C", 1))
        samples = int(sizes.get("S", 1))
        rgb = bool(f.is_rgb) and samples in (3, 4)
        names: list[str] = []
        size = None
        try:
            channels = f.metadata.channels or []
            names = [ch.channel.name for ch in channels]
            volume = channels[0].volume if channels else None
            if volume is not None and all(volume.axesCalibrated[:2]):
                x_um, y_um = volume.axesCalibration[:2]
                size = yx_um(y_um, x_um)
        except (AttributeError, IndexError, TypeError):
            pass
        positions = self._position_names(int(sizes.get("P", 1)))
        self._n_c = n_c
        for p in range(int(sizes.get("P", 1))):
            self._add_scene(
                positions[p],
                (size_t, n_c, sizes.get("Z", 1), sizes["Y"], sizes["X"]),
                np.dtype(f.dtype),
                names,
                size,
                "ND2 metadata (axesCalibration)",
                rgb=rgb,
                samples=samples if rgb else 1,
            )

    def _position_names(self, n: int) -> list[str | None]:
        names: list[str | None] = [None] * n
        try:
            for loop in self._nd2.experiment:
                if type(loop).__name__ == "XYPosLoop":
                    parameters: Any = loop.parameters
                    for i, point in enumerate(parameters.points[:n]):
                        names[i] = point.name or None
        except (AttributeError, TypeError):
            pass
        return names

    def _unit_bytes(self, scene: int) -> tuple[int, str]:
        s = self.scenes[scene]
        frame = max(s.sizes["Y"] * s.sizes["X"] * self._n_c * s.samples * s.dtype.itemsize, self._frame_bytes())
        return frame, f"an ND2 frame holds all {self._n_c} channels" if self._n_c > 1 else "one ND2 frame"

    def _frame_bytes(self) -> int:
        """A frame's bytes as nd2 reads it: its rows of ``widthBytes`` (every channel, padded)."""
        attrs = self._nd2.attributes
        return int(attrs.heightPx or 0) * int(attrs.widthBytes or 0)

    def _check_frame(self, index: int) -> None:
        """LsmError when frame ``index`` is stored compressed and expands beyond its declared size (with 64 KB
        to spare): a zlib frame (a modern file) is decompressed here a megabyte at a time, nothing kept; a
        JPEG 2000 frame (a legacy file) has its size read from its SIZ marker. Only then does nd2, which
        decompresses a frame whole, read it."""
        import zlib

        rdr: Any = self._nd2._rdr  # its chunk map (modern) or chunk loader (legacy): nd2 has no public way
        attrs = self._nd2.attributes
        most = self._unit_bytes(0)[0]
        too_big = LsmError(
            f"a compressed frame of this ND2 expands beyond the {megabytes(most)} its header declares; the file "
            "is damaged or hostile"
        )
        if attrs.compressionType == "lossless" and hasattr(rdr, "chunkmap"):
            where = rdr.chunkmap.get(f"ImageDataSeq|{index}!".encode())
            if where is None:
                return  # nd2 gives a blank frame
            fh = self._fh
            fh.seek(int(where[0]))
            head = fh.read(16)
            if len(head) < 16:
                return  # nd2 says the file is damaged
            _, name_length, data_length = struct.unpack("<IIQ", head)
            fh.seek(int(where[0]) + 16 + name_length + 8)  # after the frame's 8-byte time stamp
            total = 0
            inflate = zlib.decompressobj()
            for piece in pieces(fh, max(0, data_length - 8)):
                while piece and not inflate.eof:
                    total += len(inflate.decompress(piece, 1 << 20))
                    if total > most + 65536:
                        raise too_big
                    piece = inflate.unconsumed_tail
                if inflate.eof:
                    break
        elif type(rdr).__name__ == "LegacyReader":
            n_c = int(attrs.channelCount or 1)
            for i in range(n_c):
                found = _j2k_size(rdr._load_chunk(b"LUNK", index * n_c + i))
                if found is None or found[0] * found[1] * found[2] * self.scenes[0].dtype.itemsize > most + 65536:
                    raise too_big

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        t_index = [int(v) for v in np.unravel_index(t, self._t_shape)] if self._t_shape else []
        coords = dict(zip(self._t_axes, t_index))
        coords.update({"P": scene.index, "Z": z})
        key = tuple(coords.get(k, 0) for k in self._loop_keys)
        if key not in self._frames:
            raise LsmError(f"the ND2 has no frame for t={t}, z={z} in scene {scene.index} (an interrupted run?)")
        self._check_frame(self._frames[key])
        frame = np.asarray(self._nd2.read_frame(self._frames[key]))
        plane_dims = 3 if scene.rgb else 2
        if frame.ndim > plane_dims:  # channels first
            frame = frame[c]
        return frame

    def _close(self) -> None:
        self._nd2.close()
        self._fh.close()
