"""Leica LIF through readlif (:class:`LifReader`): one plane read at its offset."""

from __future__ import annotations

import struct
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from lsm_core.errors import LsmError
from lsm_core.imaging.readers.base import Limits, Scene, StackReader, check_declared, megabytes, pieces, yx_um

# What readlif's whole-document ElementTree costs beyond the header's text, measured on Python 3.11: 88 bytes
# an element, about 60 an attribute (rounded up here)
_XML_ELEMENT_BYTES = 100
_XML_ATTRIBUTE_BYTES = 70


class _XmlCount:
    """A target of ET.XMLParser that counts elements and attributes and keeps nothing."""

    def __init__(self) -> None:
        self.elements = 0
        self.attributes = 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.elements += 1
        self.attributes += len(attrib)

    def close(self) -> None:
        return None


def _lif_check(path: Path, limits: Limits, what: str) -> None:
    """A LIF's headers from its own bytes, before readlif reads them: readlif holds the XML header whole
    (its UTF-16 bytes, their text and an ElementTree of it), so its cost, estimated while streaming it once
    through a counting parser, is held to LSM_MAX_IMAGE_BYTES; and readlif keeps an offset per memory block,
    so the blocks (one per image) are counted against LSM_MAX_PLANES, stopping at the limit."""
    import codecs

    with path.open("rb") as fh:
        head = fh.read(13)
        if len(head) < 13:
            raise ValueError("the file ends inside its header")
        chars = struct.unpack_from("<I", head, 9)[0]
        count = _XmlCount()
        parser = ET.XMLParser(target=count)
        decoder = codecs.getincrementaldecoder("utf-16-le")()
        read = 0
        try:
            for piece in pieces(fh, 2 * chars):
                read += len(piece)
                parser.feed(decoder.decode(piece))
                cost = 2 * read + _XML_ELEMENT_BYTES * count.elements + _XML_ATTRIBUTE_BYTES * count.attributes
                if cost > limits.max_image_bytes:
                    raise LsmError(
                        f"reading this LIF's XML header takes more than {megabytes(cost)} at once (readlif holds "
                        f"it whole, with a tree of its elements, {count.elements:,} in the first "
                        f"{megabytes(read)}); the limit is {megabytes(limits.max_image_bytes)} "
                        "(LSM_MAX_IMAGE_BYTES). Save the images that matter as OME-TIFF."
                    )
            parser.feed(decoder.decode(b"", final=True))
            parser.close()
        except (ET.ParseError, UnicodeDecodeError) as exc:
            raise ValueError(f"the XML header is damaged ({exc})") from None
        fh.seek(13 + 2 * chars)
        blocks = 0
        while True:  # as readlif walks them: magic, 4 bytes, 0x2A, a 32- or 64-bit length, 0x2A, description
            block = fh.read(14)
            if len(block) < 14 or block[:4] != b"\x70\x00\x00\x00" or block[8] != 0x2A:
                return  # the end, or damage that readlif reports
            blocks += 1
            if blocks > limits.max_planes:
                raise LsmError(
                    f"{what} holds more than {limits.max_planes:,} memory blocks (one per image); the limit is "
                    f"{limits.max_planes:,} planes (LSM_MAX_PLANES)"
                )
            if block[13] == 0x2A:
                length = struct.unpack_from("<I", block, 9)[0]
            else:
                tail = fh.read(4)  # the 64-bit length's last bytes, then 0x2A
                if len(tail) < 4:
                    return
                length = struct.unpack_from("<Q", block + tail, 9)[0]
            described = fh.read(4)
            if len(described) < 4:
                return
            fh.seek(2 * struct.unpack("<I", described)[0] + length, 1)


class LifReader(StackReader):
    """Leica LIF through readlif: each image is a scene (each tile of a tile scan its own scene); one plane
    read at its offset. Channel names come from the image's channel settings where the XML has them
    (wide-field: the user's channel name or contrast method; confocal: the active detectors, e.g.
    "PMT Trans"), "" otherwise. The pixel size is readlif's (n - 1) / length convention.

    Bounded before readlif reads the file (:func:`_lif_check`), and before a scene is made: each image's
    channels, z planes, time points and tiles, the file's scenes and its scene-time-point pages
    (LSM_MAX_PLANES). LIF pixels are stored uncompressed: a plane is read at its offset, its size checked."""

    format = "LIF"
    library = "readlif"

    def __init__(self, path: Path, name: str, limits: Limits, detail: Any = None) -> None:
        from readlif.reader import LifFile

        super().__init__(path, name, limits)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readlif warns of a truncated file and goes on with blank images
            _lif_check(path, limits, name)
            self._lif = LifFile(str(path))
        images = list(self._lif.get_iter_image())
        for image in images:
            check_declared(
                limits,
                f"{name} (image {image.name})",
                channels=int(image.channels),
                z_planes=int(image.nz),
                time_points=int(image.nt),
                tiles=int(image.n_mosaic),
            )
        check_declared(limits, name, scenes=sum(max(1, int(image.n_mosaic)) for image in images))
        check_declared(limits, name, pages=sum(max(1, int(image.n_mosaic)) * max(1, int(image.nt)) for image in images))
        file_size = path.stat().st_size
        for i, image in enumerate(images):
            bits = int(max(image.bit_depth)) if image.bit_depth else 8
            planes = int(image.channels) * int(image.nz) * int(image.nt) * int(image.n_mosaic)
            expected = planes * int(image.dims.x) * int(image.dims.y) * ((bits + 7) // 8)
            stored = int(image.offsets[1])
            if int(image.offsets[0]) + stored > file_size:
                stored = max(0, file_size - int(image.offsets[0]))
            if stored < expected:
                raise ValueError(
                    f"image {i + 1} ({image.name}) holds {stored:,} bytes of pixels where its header says "
                    f"{expected:,}: the file is truncated"
                )
        elements = [el for el in self._lif.xml_root.iter("Element") if el.find("./Data/Image") is not None]
        self._tiles: list[tuple[Any, int]] = []
        for i, image in enumerate(images):
            bits = int(max(image.bit_depth)) if image.bit_depth else 8
            if bits > 16:
                raise LsmError(f"image {i + 1} stores {bits}-bit samples, which readlif cannot read")
            dtype = np.dtype(np.uint8 if bits <= 8 else np.uint16)
            names = self._channel_names(elements[i] if i < len(elements) else None, int(image.channels))
            scale_x, scale_y = image.scale[0], image.scale[1]
            size = yx_um(1.0 / scale_y if scale_y else None, 1.0 / scale_x if scale_x else None)
            n_m = int(image.n_mosaic)
            for m in range(n_m):
                self._tiles.append((image, m))
                self._add_scene(
                    image.name if n_m == 1 else f"{image.name} tile {m + 1}",
                    (image.nt, image.channels, image.nz, image.dims.y, image.dims.x),
                    dtype,
                    names,
                    size,
                    "LIF metadata (readlif)",
                )

    @staticmethod
    def _channel_names(element: ET.Element | None, n: int) -> list[str]:
        """The names of an image's ``n`` channels: the wide-field channels', else the active detectors', when
        there are ``n`` of them; else none."""
        if element is None:
            return []
        wide = element.findall(".//WideFieldChannelInfo")
        if len(wide) == n:
            return [w.get("UserDefName") or w.get("ContrastingMethodName") or w.get("FluoCubeName") or "" for w in wide]
        detectors = [
            d.get("Name") or ""
            for d in element.findall(".//ATLConfocalSettingDefinition/DetectorList/Detector")
            if d.get("IsActive") == "1"
        ]
        return detectors if len(detectors) == n else []

    def _read(self, scene: Scene, t: int, c: int, z: int) -> np.ndarray:
        image, m = self._tiles[scene.index]
        return np.asarray(image.get_frame(z=z, t=t, c=c, m=m))
