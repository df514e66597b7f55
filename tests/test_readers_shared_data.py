"""The reading layer on real microscope files that no one on this project made (../shared/data, see its
README): one brightfield field written by Zeiss ZEN (CZI), by Bio-Formats (OME-TIFF) and by ImageJ, a Nikon
NIS-Elements ND2, and a brightfield montage of Jurkat cells. The files are read where they lie, never copied
into the project. Without the folder the tests skip, and fail under CI=true."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from lsm_core.errors import LsmError
from lsm_core.imaging.planes import best_focus, transmitted_channel
from lsm_core.imaging.readers import open_microscope_file

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VENDOR = DATA / "vendor"
CZI = VENDOR / "aicsimageio_s_1_t_1_c_1_z_1.czi"
OME_TIFF = VENDOR / "aicsimageio_s_1_t_1_c_1_z_1.ome.tiff"
IMAGEJ_TIFF = VENDOR / "aicsimageio_s_1_t_1_c_1_z_1_imagej.tiff"
ND2 = VENDOR / "pims_cluster.nd2"
JURKAT = DATA / "brightfield" / "jurkat_G1_montage.tif"


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        message = f"the shared microscope files are absent: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def same_field() -> dict[str, np.ndarray]:
    """The one plane of each of the three files of the same field, by format."""
    need(CZI, OME_TIFF, IMAGEJ_TIFF)
    planes = {}
    for path in (CZI, OME_TIFF, IMAGEJ_TIFF):
        with open_microscope_file(path) as mf:
            planes[mf.format] = mf.plane(0, 0, 0, 0)
    return planes


def test_czi_ome_tiff_and_imagej_tiff_of_one_field_give_the_same_pixels(same_field):
    assert set(same_field) == {"CZI", "OME-TIFF", "ImageJ TIFF"}
    reference = same_field["CZI"]
    assert reference.shape == (325, 475)
    assert reference.dtype == np.uint16
    assert reference.std() > 0  # a real field, not a blank plane
    for fmt, plane in same_field.items():
        np.testing.assert_array_equal(plane, reference, err_msg=fmt)


@pytest.mark.parametrize(
    ("path", "fmt", "channels", "pixel_um", "origin"),
    [
        (CZI, "CZI", ["Bright"], 1.0833333333333333, "CZI metadata (Scaling/Items/Distance)"),
        (OME_TIFF, "OME-TIFF", ["Bright"], 1.0833333333333333, "OME-XML PhysicalSizeX/Y"),
        # ImageJ keeps the size as resolution tags (pixels per micron as a 32-bit fraction) and names no channel
        (IMAGEJ_TIFF, "ImageJ TIFF", [""], 1.0e6 / 923076, "ImageJ unit micron + resolution tags"),
    ],
)
def test_same_field_headers(path, fmt, channels, pixel_um, origin):
    need(path)
    with open_microscope_file(path) as mf:
        assert mf.format == fmt
        assert len(mf.scenes) == 1
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 1, "C": 1, "Z": 1, "Y": 325, "X": 475}
        assert scene.dtype == np.uint16
        assert not scene.rgb
        assert scene.channels == channels
        assert scene.pixel_size_um == pytest.approx((pixel_um, pixel_um), rel=1e-9)
        assert scene.pixel_size_origin == origin
        assert transmitted_channel(scene.channels) == 0  # by its name "Bright", or as the only channel
    if fmt == "ImageJ TIFF":
        assert pixel_um == pytest.approx(1.0833344, abs=1e-7)


def test_nd2_sizes_names_pixel_size_and_planes():
    need(ND2)
    import nd2

    with open_microscope_file(ND2) as mf:
        assert mf.format == "ND2"
        assert len(mf.scenes) == 1
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 3, "C": 2, "Z": 10, "Y": 31, "X": 38}
        assert scene.dtype == np.uint16
        assert scene.channels == ["5-FAM/pH 9.0", "FM 4-64/2% CHAPS"]
        assert scene.pixel_size_um == pytest.approx((0.16780898323268245, 0.16780898323268245))
        assert transmitted_channel(scene.channels) is None  # two fluorescence channels: the caller asks
        # every plane is the one nd2's own whole-file read puts at (t, z, c)
        whole = nd2.imread(str(ND2))
        assert whole.shape == (3, 10, 2, 31, 38)
        for t in range(3):
            for c in range(2):
                for z in range(10):
                    np.testing.assert_array_equal(mf.plane(0, t, c, z), whole[t, z, c])
        index, scores = best_focus(mf.z_planes(0, 0, 1))
        assert len(scores) == 10
        assert 0 <= index < 10 and scores[index] == max(scores) > 0


def test_jurkat_montage_has_no_pixel_size():
    need(JURKAT)
    with open_microscope_file(JURKAT) as mf:
        assert mf.format == "TIFF"
        scene = mf.scenes[0]
        assert scene.sizes == {"T": 1, "C": 1, "Z": 1, "Y": 1200, "X": 1200}
        assert scene.dtype == np.uint16
        assert scene.pixel_size_um is None  # its 72 dpi resolution tags are not a calibration
        assert scene.pixel_size_origin is None
        plane = mf.plane(0)
        assert plane.shape == (1200, 1200) and plane.dtype == np.uint16 and plane.std() > 0


@pytest.mark.parametrize(
    ("source", "keep", "looks_like", "reader"),
    [
        (CZI, 5000, "a Zeiss CZI", "czifile"),  # the directory is cut off: the header fails
        (ND2, 100_000, "a Nikon ND2", "nd2"),  # the chunk map at the end is gone
        (ND2, 4000, "a Nikon ND2", "nd2"),
    ],
)
def test_truncated_vendor_file_says_which_format_and_reader_failed(tmp_path, source, keep, looks_like, reader):
    need(source)
    cut = tmp_path / f"cut{source.suffix}"
    cut.write_bytes(source.read_bytes()[:keep])
    with pytest.raises(LsmError) as info:
        open_microscope_file(cut)
    message = str(info.value)
    assert f"the file looks like {looks_like} but the {reader} reader failed" in message
    assert str(tmp_path) not in message  # the reader's text, without where the file lies on the server


def test_czi_cut_inside_its_pixels_fails_when_the_plane_is_read(tmp_path):
    need(CZI)
    cut = tmp_path / "cut.czi"
    data = CZI.read_bytes()
    cut.write_bytes(data[:700_000])  # headers and directory intact, the pixels end early
    with open_microscope_file(cut) as mf:
        assert mf.scenes[0].sizes["Y"] == 325
        with pytest.raises(LsmError, match="looks like a Zeiss CZI but the czifile reader failed reading a plane"):
            mf.plane(0)


def recompress_czi(source: Path, target: Path, compression: int) -> None:
    """The shared CZI with its one subblock stored compressed as ZEN stores it: 2 = LZW, 4 = JPEG XR
    (lossless), 5 = plain zstd; 6 = the 'zstd1' header (3 bytes: its size, chunk type 1, flag 1 = hi-lo
    byte packing) then zstd of all low bytes followed by all high bytes. The segment and directory entries
    are patched to say so (compression field, data size); the segment keeps its allocated size, so nothing
    else moves."""
    import czifile
    import imagecodecs

    data = bytearray(source.read_bytes())
    with czifile.CziFile(str(source)) as czi:
        directory = czi.header.directory_position
        (entry,) = czi.subblock_directory
        segment = entry.data_segment()
        pixels = bytes(data[segment.data_offset : segment.data_offset + segment.data_size])
        at = entry.file_position
    if compression == 2:
        packed = imagecodecs.lzw_encode(pixels)
    elif compression == 4:
        packed = imagecodecs.jpegxr_encode(np.frombuffer(pixels, np.uint16).reshape(325, 475), level=1.0)
    elif compression == 5:
        packed = imagecodecs.zstd_encode(pixels)
    else:
        raw = np.frombuffer(pixels, np.uint8)
        packed = bytes([3, 1, 1]) + imagecodecs.zstd_encode(raw[0::2].tobytes() + raw[1::2].tobytes())
    assert len(packed) < len(pixels)
    struct.pack_into("<q", data, at + 32 + 8, len(packed))  # the segment's data size
    struct.pack_into("<i", data, at + 48 + 2 + 4 + 8 + 4, compression)  # the segment's own entry
    struct.pack_into("<i", data, directory + 32 + 128 + 2 + 4 + 8 + 4, compression)  # the directory's entry
    data[segment.data_offset : segment.data_offset + len(packed)] = packed
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("compression", [2, 4, 5, 6])
def test_compressed_czi_subblocks_decode_to_the_same_pixels(tmp_path, compression):
    need(CZI)
    with open_microscope_file(CZI) as mf:
        reference = mf.plane(0)
    target = tmp_path / f"compressed{compression}.czi"
    recompress_czi(CZI, target, compression)
    with open_microscope_file(target) as mf:
        assert mf.format == "CZI"
        np.testing.assert_array_equal(mf.plane(0), reference)
