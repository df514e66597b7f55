"""The microscope-file reading layer (lsm_core.imaging.readers) on files with known truth, written here by
the formats' own writers (tifffile's OME and ImageJ writers, zarr, Pillow) or, for Leica LIF and Olympus
OIF, byte by byte after the layout their readers parse. No mocks: every test opens a real file."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from lsm_core.errors import LsmError
from lsm_core.imaging import synthetic
from lsm_core.imaging.planes import best_focus, channel_words, focus_score, transmitted_channel
from lsm_core.imaging.readers import SUPPORTED_FORMATS, open_microscope_file
from lsm_core.imaging.readers.base import Limits, image_label


def stack(t: int, c: int, z: int, y: int, x: int, dtype=np.uint16) -> np.ndarray:
    """A TCZYX stack whose every plane is constant: 100 t + 10 c + z + 1, so a plane tells where it is."""
    out = np.empty((t, c, z, y, x), dtype)
    for ti in range(t):
        for ci in range(c):
            for zi in range(z):
                out[ti, ci, zi] = 100 * ti + 10 * ci + zi + 1
    return out


def value(t: int, c: int, z: int) -> int:
    return 100 * t + 10 * c + z + 1


def assert_planes(mf, scene: int, t: int, c: int, z: int, shape: tuple[int, int]) -> None:
    for ti in range(t):
        for ci in range(c):
            for zi in range(z):
                plane = mf.plane(scene, ti, ci, zi)
                assert plane.shape == shape
                assert plane.min() == plane.max() == value(ti, ci, zi), (ti, ci, zi)


# ------------------------------------------------------------------------------------------- OME-TIFF


@pytest.mark.parametrize(
    ("unit", "sx", "sy", "expected"),
    [("nm", 650.0, 700.0, (0.7, 0.65)), ("mm", 0.0005, 0.0005, (0.5, 0.5)), ("µm", 0.2, 0.25, (0.25, 0.2))],
)
def test_ome_tiff_sizes_names_units_and_planes(tmp_path, unit, sx, sy, expected):
    path = tmp_path / "field.ome.tif"
    data = stack(2, 3, 4, 20, 30)
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "TCZYX",
            "Channel": {"Name": ["GFP", "DIC", "Hoechst"]},
            "PhysicalSizeX": sx,
            "PhysicalSizeXUnit": unit,
            "PhysicalSizeY": sy,
            "PhysicalSizeYUnit": unit,
        },
    )
    with open_microscope_file(path) as mf:
        assert mf.format == "OME-TIFF"
        assert len(mf.scenes) == 1
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 2, "C": 3, "Z": 4, "Y": 20, "X": 30}
        assert scene.channels == ["GFP", "DIC", "Hoechst"]
        assert scene.dtype == np.uint16
        assert not scene.rgb
        assert scene.pixel_size_um == pytest.approx(expected)
        assert scene.pixel_size_origin == "OME-XML PhysicalSizeX/Y"
        assert transmitted_channel(scene.channels) == 1
        assert_planes(mf, 0, 2, 3, 4, (20, 30))


def test_ome_tiff_with_two_images_gives_two_scenes(tmp_path):
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(stack(1, 1, 2, 8, 9), metadata={"axes": "TCZYX", "Name": "first", "Channel": {"Name": ["BF"]}})
        tw.write(
            stack(3, 2, 1, 5, 6, np.uint8),
            metadata={"axes": "TCZYX", "Name": "second", "Channel": {"Name": ["TD", "mCherry"]}},
        )
    with open_microscope_file(path) as mf:
        assert [s.name for s in mf.scenes] == ["first", "second"]
        assert mf.scenes[0].sizes == {"T": 1, "C": 1, "Z": 2, "Y": 8, "X": 9}
        assert mf.scenes[1].sizes == {"T": 3, "C": 2, "Z": 1, "Y": 5, "X": 6}
        assert mf.scenes[1].dtype == np.uint8
        assert mf.scenes[1].channels == ["TD", "mCherry"]
        assert mf.scenes[0].pixel_size_um is None  # the file gives none
        assert_planes(mf, 0, 1, 1, 2, (8, 9))
        assert_planes(mf, 1, 3, 2, 1, (5, 6))


def test_compressed_ome_tiff_reads_one_page_per_plane(tmp_path):
    path = tmp_path / "zlib.ome.tif"
    tifffile.imwrite(path, stack(1, 2, 3, 16, 16), ome=True, compression="zlib", metadata={"axes": "TCZYX"})
    with open_microscope_file(path) as mf:
        assert mf.scenes[0].channels == ["", ""]  # no names in the file
        assert transmitted_channel(mf.scenes[0].channels) is None
        assert_planes(mf, 0, 1, 2, 3, (16, 16))


# ---------------------------------------------------------------------------------------- ImageJ TIFF


@pytest.mark.parametrize(("unit", "um_per_unit"), [("micron", 1.0), ("um", 1.0), ("nm", 1e-3), ("mm", 1e3)])
def test_imagej_hyperstack_unit_resolution_and_planes(tmp_path, unit, um_per_unit):
    path = tmp_path / "hyper.tif"
    data = stack(2, 2, 3, 12, 14)  # written by ImageJ's axis order TZCYX
    size_y, size_x = 0.4 / um_per_unit, 0.3 / um_per_unit  # in the file's unit
    tifffile.imwrite(
        path,
        np.ascontiguousarray(data.transpose(0, 2, 1, 3, 4)),
        imagej=True,
        resolution=(1 / size_x, 1 / size_y),
        metadata={"axes": "TZCYX", "unit": unit},
    )
    with open_microscope_file(path) as mf:
        assert mf.format == "ImageJ TIFF"
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 2, "C": 2, "Z": 3, "Y": 12, "X": 14}
        assert scene.channels == ["", ""]
        assert scene.pixel_size_um == pytest.approx((0.4, 0.3), rel=1e-6)
        assert scene.pixel_size_origin == f"ImageJ unit {unit} + resolution tags"
        assert_planes(mf, 0, 2, 2, 3, (12, 14))


# -------------------------------------------------------------------------------------------- plain TIFF


@pytest.mark.parametrize(
    ("unit", "per_unit", "expected", "origin"),
    [
        ("CENTIMETER", 1e4 / 2.5, (2.5, 2.5), "TIFF resolution tags (cm)"),
        ("INCH", 25400 / 5.0, (5.0, 5.0), "TIFF resolution tags (inch)"),
        ("INCH", 72.0, None, None),  # the 72 dpi image editors write: not a calibration
        ("NONE", 3.0, None, None),
    ],
)
def test_plain_tiff_resolution_tags(tmp_path, unit, per_unit, expected, origin):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(
        path, np.full((10, 11), 7, np.uint16), resolution=(per_unit, per_unit), resolutionunit=unit, metadata=None
    )
    with open_microscope_file(path) as mf:
        assert mf.format == "TIFF"
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 1, "C": 1, "Z": 1, "Y": 10, "X": 11}
        assert scene.channels == [""]
        assert scene.pixel_size_um == (pytest.approx(expected) if expected else None)
        assert scene.pixel_size_origin == origin
        assert (mf.plane(0) == 7).all()


def test_plain_tiff_anisotropic_pixels_are_reported_not_refused(tmp_path):
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8), resolution=(1e4 / 0.5, 1e4 / 1.5), resolutionunit="CENTIMETER")
    with open_microscope_file(path) as mf:
        assert mf.scenes[0].pixel_size_um == pytest.approx((1.5, 0.5))


def test_plain_multipage_tiff_pages_are_time_points(tmp_path):
    path = tmp_path / "pages.tif"
    for i in range(3):
        tifffile.imwrite(path, np.full((6, 5), i + 1, np.uint8), append=True, metadata=None)
    with open_microscope_file(path) as mf:
        assert mf.scenes[0].sizes == {"T": 3, "C": 1, "Z": 1, "Y": 6, "X": 5}
        assert [int(mf.plane(0, t).max()) for t in range(3)] == [1, 2, 3]


def test_tiff_samples_rgb_and_grey_channels(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    three = np.stack([np.full((4, 6), v, np.uint16) for v in (11, 22, 33)], axis=-1)
    tifffile.imwrite(tmp_path / "three.tif", three, photometric="minisblack", planarconfig="contig")
    with open_microscope_file(tmp_path / "rgb.tif") as mf:
        scene = mf.scenes[0]
        assert scene.rgb and scene.sizes["C"] == 1 and scene.channels == [""]
        assert int(mf.plane(0)[0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    with open_microscope_file(tmp_path / "three.tif") as mf:
        scene = mf.scenes[0]
        assert not scene.rgb and scene.sizes["C"] == 3
        assert [int(mf.plane(0, 0, c)[0, 0]) for c in range(3)] == [11, 22, 33]


# ---------------------------------------------------------------------------------------------- OME-Zarr


def write_ome_zarr(folder: Path, data: np.ndarray, zarr_format: int, chunks=None, write=True) -> None:
    import zarr

    group = zarr.open_group(str(folder), mode="w", zarr_format=zarr_format)
    array = group.create_array("0", shape=data.shape, chunks=chunks or (1, 1, 1, *data.shape[3:]), dtype=data.dtype)
    if write:
        array[...] = data
    group.create_array("1", shape=(*data.shape[:3], 1, 1), chunks=(1, 1, 1, 1, 1), dtype=data.dtype)
    units = ["second", None, "micrometer", "nanometer", "nanometer"]
    axes = []
    for name, kind, unit in zip("tczyx", ["time", "channel", "space", "space", "space"], units):
        axis = {"name": name, "type": kind}
        if unit:
            axis["unit"] = unit
        axes.append(axis)
    multiscales = [
        {
            "version": "0.4" if zarr_format == 2 else "0.5",
            "name": "cells",
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 2.0, 325.0, 250.0]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 2.0, 9e3, 9e3]}]},
            ],
        }
    ]
    omero = {"channels": [{"label": "Hoechst"}, {"label": "Brightfield"}][: data.shape[1]]}
    if zarr_format == 2:
        group.attrs.update({"multiscales": multiscales, "omero": omero})
    else:
        group.attrs.update({"ome": {"version": "0.5", "multiscales": multiscales, "omero": omero}})


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, f"{folder.name}/{file.relative_to(folder).as_posix()}")
    return target


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_folder_and_zip(tmp_path, zarr_format):
    folder = tmp_path / "cells.ome.zarr"
    data = stack(2, 2, 3, 9, 7)
    write_ome_zarr(folder, data, zarr_format)
    archive = zip_folder(folder, tmp_path / "cells.zip")
    for source in (folder, archive):
        with open_microscope_file(source) as mf:
            assert mf.format == "OME-Zarr"
            assert len(mf.scenes) == 1
            scene = mf.scenes[0]
            assert scene.name == "cells"
            assert scene.sizes == {"T": 2, "C": 2, "Z": 3, "Y": 9, "X": 7}
            assert scene.channels == ["Hoechst", "Brightfield"]
            assert scene.pixel_size_um == pytest.approx((0.325, 0.25))  # from nanometres
            assert transmitted_channel(scene.channels) == 1
            assert_planes(mf, 0, 2, 2, 3, (9, 7))


def test_ome_zarr_scale_without_unit_gives_no_pixel_size(tmp_path):
    import zarr

    folder = tmp_path / "nounit.zarr"
    write_ome_zarr(folder, stack(1, 1, 1, 4, 4), 2)
    group = zarr.open_group(str(folder), mode="r+")
    multiscales = group.attrs["multiscales"]
    for axis in multiscales[0]["axes"]:
        axis.pop("unit", None)
    group.attrs["multiscales"] = multiscales
    with open_microscope_file(folder) as mf:
        assert mf.scenes[0].pixel_size_um is None


def test_ome_zarr_header_claiming_a_huge_plane_is_refused_before_decoding(tmp_path):
    folder = tmp_path / "huge.zarr"
    # 100,000 x 100,000 pixels declared, no chunk written: decoding would allocate 20 GB of fill value
    write_ome_zarr(folder, np.zeros((1, 1, 1, 1, 1), np.uint16), 2)
    import zarr

    group = zarr.open_group(str(folder), mode="r+")
    group.create_array(
        "0", shape=(1, 1, 1, 100_000, 100_000), chunks=(1, 1, 1, 1000, 1000), dtype="uint16", overwrite=True
    )
    with open_microscope_file(folder) as mf:
        assert mf.scenes[0].sizes["Y"] == mf.scenes[0].sizes["X"] == 100_000
        with pytest.raises(LsmError, match="LSM_MAX_IMAGE_PIXELS"):
            mf.check(0)
        with pytest.raises(LsmError, match="100000 x 100000 pixels"):
            mf.plane(0)


def test_ome_zarr_chunk_larger_than_the_limit_is_refused(tmp_path):
    folder = tmp_path / "bigchunk.zarr"
    write_ome_zarr(folder, np.zeros((1, 1, 40, 256, 256), np.uint16), 2, chunks=(1, 1, 40, 256, 256), write=False)
    limits = Limits(max_image_bytes=4_000_000)  # the plane (256 x 256 x 6 bytes) fits, the 5 MB chunk not
    with open_microscope_file(folder, limits=limits) as mf:
        with pytest.raises(LsmError, match="one Zarr chunk of shape"):
            mf.plane(0, 0, 0, 3)
    with open_microscope_file(folder) as mf:  # the default limits allow it
        assert mf.plane(0, 0, 0, 3).shape == (256, 256)


# ------------------------------------------------------------------------------------ a huge TIFF header


def test_tiff_header_claiming_a_huge_plane_is_refused_before_decoding(tmp_path):
    path = tmp_path / "claims.tif"
    tifffile.imwrite(path, np.zeros((2, 2), np.uint8), metadata=None)
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        for tag in ("ImageWidth", "ImageLength"):
            t = page.tags[tag]
            fmt = "<H" if t.dtype == 3 else "<I"
            struct.pack_into(fmt, raw, t.valueoffset, 60000)
    path.write_bytes(bytes(raw))
    with open_microscope_file(path) as mf:  # the header opens
        assert mf.scenes[0].sizes["Y"] == mf.scenes[0].sizes["X"] == 60000
        with pytest.raises(LsmError, match="LSM_MAX_IMAGE_PIXELS"):
            mf.plane(0)


# ---------------------------------------------------------------------------------------------- PNG / JPEG


def test_rgb_png_is_one_scene_one_channel_luminance(tmp_path):
    rgb = np.zeros((5, 8, 3), np.uint8)
    rgb[..., 0] = np.arange(8) * 30
    rgb[..., 1] = 120
    rgb[..., 2] = 240
    path = tmp_path / "photo.tif"  # the name lies: the content decides
    Image.fromarray(rgb).save(path, format="PNG")
    with open_microscope_file(path) as mf:
        assert mf.format == "PNG"
        assert len(mf.scenes) == 1
        scene = mf.scenes[0]
        assert scene.rgb
        assert scene.sizes == {"T": 1, "C": 1, "Z": 1, "Y": 5, "X": 8}
        assert scene.channels == [""]
        assert scene.pixel_size_um is None
        plane = mf.plane(0)
        expected = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        assert plane.dtype == np.uint8
        np.testing.assert_array_equal(plane, expected)


def test_jpeg_named_png_is_read_as_jpeg(tmp_path):
    path = tmp_path / "cells.png"
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(path, format="JPEG")
    with open_microscope_file(path) as mf:
        assert mf.format == "JPEG"
        assert not mf.scenes[0].rgb
        assert abs(int(mf.plane(0).mean()) - 90) <= 1


# ---------------------------------------------------------------------------------------------- Leica LIF


def write_lif(
    path: Path, planes: np.ndarray, pixel_m: float, detectors: list[tuple[str, bool]], pixels: bool = True
) -> None:
    """A minimal LIF 2 file: the XML header (as LAS X writes its Element / Data / Image / ImageDescription)
    and one memory block holding ``planes`` (Z, C, Y, X) uint8, channels interleaved per z as LAS X stores
    them. The x and y extent is (n - 1) * pixel_m metres, the convention readlif reads. Without ``pixels``
    the block's bytes are left as a sparse hole of the same size."""
    z, c, h, w = planes.shape
    channels = "".join(
        f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="8" BytesInc="{i * w * h}" LUTName="Gray"/>'
        for i in range(c)
    )
    dims = (
        f'<DimensionDescription DimID="1" NumberOfElements="{w}" Origin="0" Length="{(w - 1) * pixel_m}" Unit="m" '
        f'BytesInc="1"/>'
        f'<DimensionDescription DimID="2" NumberOfElements="{h}" Origin="0" Length="{(h - 1) * pixel_m}" Unit="m" '
        f'BytesInc="{w}"/>'
        f'<DimensionDescription DimID="3" NumberOfElements="{z}" Origin="0" Length="2e-6" Unit="m" '
        f'BytesInc="{w * h * c}"/>'
    )
    detector_xml = "".join(f'<Detector Name="{n}" IsActive="{int(a)}"/>' for n, a in detectors)
    xml = (
        '<LMSDataContainerHeader Version="2"><Element Name="project"><Data><Experiment/></Data>'
        '<Memory Size="0" MemoryBlockID="MemBlock_0"/><Children>'
        '<Element Name="Position 1" UniqueID="u1"><Data><Image><ImageDescription>'
        f"<Channels>{channels}</Channels><Dimensions>{dims}</Dimensions></ImageDescription>"
        '<Attachment Name="HardwareSetting"><ATLConfocalSettingDefinition>'
        f"<DetectorList>{detector_xml}</DetectorList></ATLConfocalSettingDefinition></Attachment>"
        f'</Image></Data><Memory Size="{planes.nbytes}" MemoryBlockID="MemBlock_1"/><Children/></Element>'
        "</Children></Element></LMSDataContainerHeader>"
    )
    text = xml.encode("utf-16-le")
    header = struct.pack("<II", 0x70, len(text) + 5) + b"\x2a" + struct.pack("<I", len(text) // 2) + text
    block_id = "MemBlock_1".encode("utf-16-le")
    block = (
        struct.pack("<II", 0x70, len(block_id) + 14)
        + b"\x2a"
        + struct.pack("<Q", planes.nbytes)
        + b"\x2a"
        + struct.pack("<I", len(block_id) // 2)
        + block_id
    )
    path.write_bytes(header + block + (planes.astype(np.uint8).tobytes() if pixels else b""))
    if not pixels:
        with open(path, "r+b") as fh:
            fh.truncate(len(header) + len(block) + planes.nbytes)


def test_lif_sizes_names_pixel_size_and_planes(tmp_path):
    path = tmp_path / "confocal.lif"
    planes = np.stack([np.stack([np.full((6, 9), value(0, c, z), np.uint8) for c in range(2)]) for z in range(3)])
    write_lif(path, planes, 0.5e-6, [("PMT Trans", True), ("HyD 1", True), ("HyD 2", False)])
    with open_microscope_file(path) as mf:
        assert mf.format == "LIF"
        scene = mf.scenes[0]
        assert scene.name == "Position 1"
        assert scene.sizes == {"T": 1, "C": 2, "Z": 3, "Y": 6, "X": 9}
        assert scene.channels == ["PMT Trans", "HyD 1"]
        assert transmitted_channel(scene.channels) == 0
        assert scene.pixel_size_um == pytest.approx((0.5, 0.5))
        assert_planes(mf, 0, 1, 2, 3, (6, 9))


def test_lif_header_claiming_a_huge_plane_is_refused_before_decoding(tmp_path):
    """A LIF whose header and memory block say 3000 x 3000 pixels (the block's bytes left as a sparse
    hole): with a lab limit of one megapixel, the plane is refused from the header, before any read."""
    path = tmp_path / "claims.lif"
    write_lif(path, np.zeros((1, 1, 3000, 3000), np.uint8), 1e-6, [], pixels=False)
    with open_microscope_file(path, limits=Limits(max_image_pixels=1_000_000)) as mf:
        assert mf.scenes[0].sizes["X"] == mf.scenes[0].sizes["Y"] == 3000
        with pytest.raises(LsmError, match="LSM_MAX_IMAGE_PIXELS"):
            mf.plane(0)


# ------------------------------------------------------------------------------------------- Olympus OIF


def write_oif(folder: Path, planes: np.ndarray, pixel_um: tuple[float, float], dyes: list[str]) -> Path:
    """An Olympus FluoView OIF: the UTF-16 settings file and its .oif.files folder holding one TIFF per
    plane named s_C001Z001.tif ... (``planes`` is (C, Z, Y, X))."""
    c, z, h, w = planes.shape
    main = folder / "cells.oif"
    storage = folder / "cells.oif.files"
    storage.mkdir(parents=True)
    for ci in range(c):
        for zi in range(z):
            tifffile.imwrite(storage / f"s_C{ci + 1:03d}Z{zi + 1:03d}.tif", planes[ci, zi])
    lines = ["[ProfileSaveInfo]", "Name=cells", "Version=1.0", "[Reference Image Parameter]"]
    lines += [f"WidthConvertValue={pixel_um[1]}", f"HeightConvertValue={pixel_um[0]}", 'WidthUnit="um"']
    lines += ['HeightUnit="um"', "ValidBitCounts=12"]
    for i, dye in enumerate(dyes):
        lines += [f"[Channel {i + 1} Parameters]", f'DyeName="{dye}"']
    main.write_bytes(b"\xff\xfe" + "\r\n".join(lines).encode("utf-16-le"))
    return main


def test_oif_sizes_names_pixel_size_and_planes(tmp_path):
    planes = np.stack([np.stack([np.full((7, 5), value(0, c, z), np.uint16) for z in range(2)]) for c in range(2)])
    main = write_oif(tmp_path, planes, (0.31, 0.3), ["Alexa Fluor 488", "TD1"])
    with open_microscope_file(main) as mf:
        assert mf.format == "OIF"
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 1, "C": 2, "Z": 2, "Y": 7, "X": 5}
        assert scene.channels == ["Alexa Fluor 488", "TD1"]
        assert transmitted_channel(scene.channels) == 1
        assert scene.pixel_size_um == pytest.approx((0.31, 0.3))
        assert_planes(mf, 0, 1, 2, 2, (7, 5))


def write_compound_file(path: Path, streams: dict[str, bytes]) -> None:
    """A minimal OLE2 compound document (version 3, 512-byte sectors), the container of an Olympus OIB.
    Each stream is made longer than 4096 bytes so that none lives in the mini stream; "a/b" puts stream b
    in storage a. The directory is a plain chain of right siblings (readers walk it as a tree). Settings
    (UTF-16 text) are padded with blank lines, TIFF files with zeros after their last byte."""
    end, free, fat_mark, none = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD, 0xFFFFFFFF
    # directory entries: [name, type, child, right, start, size]; 0 is the root
    entries: list[list] = [["Root Entry", 5, none, none, end, 0]]
    storages: dict[str, int] = {}
    children: dict[int, list[int]] = {0: []}
    data = bytearray()
    fat: list[int] = []
    for name, content in streams.items():
        parent = 0
        if "/" in name:
            folder, name = name.split("/", 1)
            if folder not in storages:
                storages[folder] = len(entries)
                entries.append([folder, 1, none, none, 0, 0])
                children[0].append(storages[folder])
                children[storages[folder]] = []
            parent = storages[folder]
        filler = b"\r\x00\n\x00" if content.startswith(b"\xff\xfe") else b"\x00" * 4  # settings: blank lines
        content = content + filler * (max(0, 4096 - len(content)) // 4 + 1)  # never in the mini stream
        padded = content + bytes(-len(content) % 512)
        first = len(fat)
        n = len(padded) // 512
        fat += [first + i + 1 for i in range(n - 1)] + [end]
        data += padded
        children[parent].append(len(entries))
        entries.append([name, 2, none, none, first, len(content)])
    for parent, kids in children.items():
        if kids:
            entries[parent][2] = kids[0]
            for a, b in zip(kids, kids[1:]):
                entries[a][3] = b
    directory = bytearray()
    for name, kind, child, right, start, size in entries:
        encoded = name.encode("utf-16-le") + b"\0\0"
        directory += struct.pack(
            "<64sHBBIII16sIQQIQ", encoded, len(encoded), kind, 1, none, right, child, bytes(16), 0, 0, 0, start, size
        )
    directory += bytes(-len(directory) % 512)
    dir_start = len(fat)
    n_dir = len(directory) // 512
    fat += [dir_start + i + 1 for i in range(n_dir - 1)] + [end]
    n_fat = 1
    while n_fat * 128 < len(fat) + n_fat:
        n_fat += 1
    fat_start = len(fat)
    fat += [fat_mark] * n_fat
    fat += [free] * (n_fat * 128 - len(fat))
    difat = list(range(fat_start, fat_start + n_fat)) + [free] * (109 - n_fat)
    header = struct.pack(
        "<8s16sHHHHHHIIIIIIIIII",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        bytes(16),
        0x3E,
        3,
        0xFFFE,
        9,
        6,
        0,
        0,
        0,
        n_fat,
        dir_start,
        0,
        4096,
        end,
        0,
        end,
        0,
    ) + struct.pack("<109I", *difat)
    path.write_bytes(header + bytes(data) + bytes(directory) + struct.pack(f"<{len(fat)}I", *fat))


def settings_text(lines: list[str]) -> bytes:
    return b"\xff\xfe" + "\r\n".join(lines).encode("utf-16-le")


def test_oib_sizes_names_pixel_size_and_planes(tmp_path):
    """An Olympus OIB: the OIF's settings and TIFF planes as streams of one compound document, with the
    OibInfo.txt that maps stream names to file names."""
    planes = {(c, z): np.full((6, 8), value(0, c, z), np.uint16) for c in range(2) for z in range(3)}
    main = write_oif(tmp_path / "oif", np.zeros((1, 1, 1, 1), np.uint16), (0.2, 0.2), ["TD1", "Alexa Fluor 568"])
    streams = {"Stream00000": main.read_bytes()}
    info = ["[OibSaveInfo]", "Version=2.0.0.0", "MainFileName=Stream00000", "Stream00000=cells.oif"]
    info.append("Storage00001=cells.oif.files")
    for i, ((c, z), plane) in enumerate(sorted(planes.items()), start=1):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, plane)
        streams[f"Storage00001/Stream{i:05d}"] = buffer.getvalue()
        info.append(f"Stream{i:05d}=s_C{c + 1:03d}Z{z + 1:03d}.tif")
    streams = {"OibInfo.txt": settings_text(info), **streams}
    path = tmp_path / "cells.oib"
    write_compound_file(path, streams)
    with open_microscope_file(path) as mf:
        assert mf.format == "OIB"
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 1, "C": 2, "Z": 3, "Y": 6, "X": 8}
        assert scene.channels == ["TD1", "Alexa Fluor 568"]
        assert transmitted_channel(scene.channels) == 0
        assert scene.pixel_size_um == pytest.approx((0.2, 0.2))
        assert_planes(mf, 0, 1, 2, 3, (6, 8))


# ---------------------------------------------------------------------------------------- unknown formats


def test_unknown_format_lists_the_supported_ones(tmp_path):
    path = tmp_path / "notes.czi"  # a vendor name does not make a vendor file
    path.write_text("plate layout: A1 young, A2 aged\n")
    with pytest.raises(LsmError) as info:
        open_microscope_file(path)
    message = str(info.value)
    assert "not a microscope image format" in message
    for named in ("OME-TIFF", "ImageJ TIFF", "CZI", "ND2", "LIF", "OIB", "OME-Zarr", "PNG", "JPEG"):
        assert named in message
    assert set(SUPPORTED_FORMATS) >= {"OME-TIFF", "CZI", "ND2", "LIF", "OIF", "OME-Zarr"}


def test_empty_file_zip_without_zarr_and_oir_say_what_they_are(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(LsmError, match="empty"):
        open_microscope_file(tmp_path / "empty.tif")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        archive.writestr("a.txt", "hello")
    with pytest.raises(LsmError, match="holds no OME-Zarr"):
        open_microscope_file(tmp_path / "images.zip")
    (tmp_path / "scan.oir").write_bytes(b"OLYMPUSRAWFORMAT" + bytes(64))
    with pytest.raises(LsmError, match="Olympus/Evident OIR"):
        open_microscope_file(tmp_path / "scan.oir")
    (tmp_path / "folder").mkdir()
    with pytest.raises(LsmError, match="not an OME-Zarr"):
        open_microscope_file(tmp_path / "folder")


def test_a_damaged_tiff_says_which_reader_failed(tmp_path):
    path = tmp_path / "cut.ome.tif"
    tifffile.imwrite(path, stack(1, 1, 1, 64, 64), ome=True, compression="zlib", metadata={"axes": "TCZYX"})
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        start = tif.pages.first.dataoffsets[0]
    path.write_bytes(data[: start + 20] + bytes(len(data) - start - 20))  # the pixels zeroed: zlib fails
    with open_microscope_file(path) as mf, pytest.raises(LsmError, match="but the tifffile reader failed"):
        mf.plane(0)


def test_plane_outside_the_scene_is_a_clear_error(tmp_path):
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, np.zeros((3, 3), np.uint8))
    with open_microscope_file(path) as mf:
        with pytest.raises(LsmError, match="z=1 is outside"):
            mf.plane(0, 0, 0, 1)
        with pytest.raises(LsmError, match="scene 2 is missing"):
            mf.plane(2)


# ------------------------------------------------------------------------------------ channels, focus, labels


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["GFP", "TD"], 1),
        (["DIC 1", "GFP"], 0),
        (["mCherry", "Bright"], 1),
        (["Hoechst", "Transmitted light"], 1),
        (["BF", "GFP"], 0),
        (["GFP", "TL Brightfield"], 1),
        (["GFP", "PMT Trans"], 1),
        (["Phase contrast", "GFP"], 0),
        (["GFP", "TransmittedLight"], 1),
        (["GFP", "DIC1"], 1),
        (["GFP", "5-FAM/pH 9.0"], None),
        (["5-FAM/pH 9.0", "FM 4-64/2% CHAPS"], None),
        (["GFP", "BFP"], None),
        (["GFP", "Brightness"], None),
        (["Dichroic", "GFP"], None),
        (["", ""], None),
        (["GFP"], 0),  # one channel: that channel
        ([""], 0),
    ],
)
def test_transmitted_channel(names, expected):
    assert transmitted_channel(names) == expected


def test_channel_words_split_case_and_punctuation():
    assert channel_words("TransmittedLight") == ["transmitted", "light"]
    assert channel_words("5-FAM/pH 9.0") == ["fam", "p", "h"]
    assert channel_words("DIC1") == ["dic"]


def test_best_focus_picks_the_plane_blurred_least():
    field, _ = synthetic.make_field("lsm", seed=4, shape=(192, 192), n_cells=5, n_debris=0)
    rng = np.random.default_rng(1)
    sigmas = [3.0, 1.5, 0.0, 1.0, 2.5]  # the third plane is in focus
    planes = []
    for sigma in sigmas:
        blurred = ndimage.gaussian_filter(field, sigma) if sigma else field
        noisy = np.clip(blurred + rng.normal(0, 0.01, field.shape), 0, 1)
        planes.append((noisy * 4000 + 200).astype(np.uint16))  # a 12-bit camera with an offset
    index, scores = best_focus(iter(planes))
    assert index == 2
    assert len(scores) == 5
    assert scores[2] > scores[3] > scores[1] > scores[4] > scores[0]
    # independent of exposure: the same plane twice as bright scores the same
    assert focus_score(planes[2] * 2) == pytest.approx(scores[2], rel=1e-3)
    assert focus_score(np.full((8, 8), 5, np.uint16)) == 0.0
    with pytest.raises(LsmError):
        best_focus([])


def test_best_focus_reads_a_file_one_plane_at_a_time(tmp_path):
    field, _ = synthetic.make_field("lsm", seed=2, shape=(128, 128), n_cells=3, n_debris=0)
    sigmas = [2.0, 0.0, 2.0]
    data = np.stack([(ndimage.gaussian_filter(field, s) if s else field) for s in sigmas])
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, (data * 60000).astype(np.uint16)[None, None], ome=True, metadata={"axes": "TCZYX"})
    with open_microscope_file(path) as mf:
        index, scores = best_focus(mf.z_planes(0, 0, 0))
    assert index == 1 and len(scores) == 3


def test_image_label():
    assert image_label("cells.czi", 0, 1, 0, 1) == "cells.czi"
    assert image_label("cells.czi", 1, 3, 2, 5) == "cells.czi[s=2,t=3]"
    assert image_label("cells.czi", 1, 3, 0, 1) == "cells.czi[s=2]"
    assert image_label("cells.nd2", 0, 1, 4, 5) == "cells.nd2[t=5]"


def test_volumetric_tiff_page_is_read_whole_within_the_limit(tmp_path):
    """A volumetric (SGI depth) page holds every z plane: the reader cannot cut it, so the whole series is
    decoded, after checking its size against the limit."""
    path = tmp_path / "volume.tif"
    data = stack(1, 1, 5, 16, 16)[0, 0]
    tifffile.imwrite(path, data, volumetric=True, tile=(16, 16))
    with open_microscope_file(path) as mf:
        assert mf.scenes[0].sizes == {"T": 1, "C": 1, "Z": 5, "Y": 16, "X": 16}
        assert_planes(mf, 0, 1, 1, 5, (16, 16))
    with open_microscope_file(path, limits=Limits(max_image_bytes=2000)) as mf:
        with pytest.raises(LsmError, match="whole series"):
            mf.plane(0, 0, 0, 2)


def test_truncated_imagej_hyperstack_is_read_at_the_plane_offset(tmp_path):
    """ImageJ writes only the first page of a hyperstack over 4 GB (tifffile: truncate=True): the planes
    are contiguous after it, and one plane is read at its byte offset."""
    path = tmp_path / "truncated.tif"
    data = stack(2, 2, 3, 10, 12)
    tifffile.imwrite(path, np.ascontiguousarray(data.transpose(0, 2, 1, 3, 4)), imagej=True, truncate=True)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # only the first IFD
    with open_microscope_file(path) as mf:
        assert mf.scenes[0].sizes == {"T": 2, "C": 2, "Z": 3, "Y": 10, "X": 12}
        assert_planes(mf, 0, 2, 2, 3, (10, 12))


def test_truncated_lif_says_which_format_and_reader_failed(tmp_path):
    """readlif itself only warns and returns blank planes for a cut file; the layer refuses it."""
    path = tmp_path / "cut.lif"
    write_lif(path, np.ones((3, 2, 6, 9), np.uint8), 0.5e-6, [])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LsmError, match="looks like a Leica LIF but the readlif reader failed: .* truncated"):
        open_microscope_file(path)


def test_jpeg_turned_by_its_exif_orientation_reports_the_turned_size(tmp_path):
    path = tmp_path / "phone.jpg"
    picture = Image.fromarray(np.full((10, 20), 128, np.uint8))  # 20 wide, 10 high as stored
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    picture.save(path, format="JPEG", exif=exif)
    with open_microscope_file(path) as mf:
        assert mf.scenes[0].sizes["Y"] == 20 and mf.scenes[0].sizes["X"] == 10
        assert mf.plane(0).shape == (20, 10)


def test_compound_document_that_is_not_an_oib_is_named(tmp_path):
    path = tmp_path / "letter.oib"
    write_compound_file(path, {"WordDocument": b"Dear lab," * 10})
    with pytest.raises(LsmError, match="OLE compound document .* but not an Olympus OIB"):
        open_microscope_file(path)
