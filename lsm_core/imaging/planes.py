"""One plane of a file: which channel (transmitted light, by name), which z plane (the best-focused), and its
grey values (the one grey representation every reader's plane becomes).

The one grey representation
---------------------------
Every image becomes a 2-D ``float32`` array of shape (H, W) with values in [0, 1] (:func:`to_grey_float`):

* colour is reduced to luminance, ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601); alpha is dropped;
* integers are divided by the largest value of their bit depth (255 for 8-bit, 65535 for 16-bit; a
  12-bit camera image stored in 16 bits therefore uses the lower part of the range, which is fine: see
  below);
* floats already inside [0, 1] are kept; other floats are rescaled from their minimum..maximum to 0..1;
  NaN or infinite values are an error.

The one intensity normalisation
-------------------------------
Exposure, bit depth and lamp brightness differ between sessions, so the networks never see absolute
intensities: the first layer of every network in :mod:`lsm_core.ml.nets` standardises each crop to zero mean
and unit standard deviation (:class:`lsm_core.ml.nets.CropStandardise`). Because it sits inside the network,
training, inference and saliency apply it identically, and any affine change of the grey values above
(8-bit vs 16-bit, 12-bit in 16) leaves predictions unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np
from scipy import ndimage

from lsm_core.errors import LsmError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_ROWS = 256  # rows converted at a time from colour to grey


# ------------------------------------------------------------------------------------------ grey values


def _luma_rows(a: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """The luminance of (H, W, 3|4) colour, a few rows at a time: (rows, float32 block); no float copy of every
    channel at once."""
    for r in range(0, a.shape[0], _ROWS):
        yield slice(r, r + _ROWS), a[r : r + _ROWS, :, :3].astype(np.float32) @ LUMA


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) RGB(A) -> (H, W) luminance ``0.299 R + 0.587 G + 0.114 B`` in the same dtype (integers
    rounded), a few rows at a time; alpha dropped. Grey + alpha (H, W, 2) gives the grey."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise LsmError(f"expected an (H, W, 3) colour picture, got shape {a.shape}")
    if a.shape[2] == 2:
        return a[..., 0].copy()
    out = np.empty(a.shape[:2], a.dtype)
    integer = np.issubdtype(a.dtype, np.integer)
    for rows, block in _luma_rows(a):
        if integer:
            info = np.iinfo(a.dtype)
            block = np.clip(np.rint(block), info.min, info.max)
        out[rows] = block
    return out


def _scaled_luminance(a: np.ndarray, bit_depth: int | None) -> np.ndarray:
    """Unsigned integer RGB(A) (H, W, 3|4) to grey float32 in [0, 1], a few rows at a time: the same values as
    rounding the luminance to the integer type and scaling it, with no other full-size copy."""
    info = np.iinfo(a.dtype)
    bits = bit_depth if bit_depth and bit_depth <= info.bits else info.bits
    top = np.float32(2**bits - 1)
    grey = np.empty(a.shape[:2], np.float32)
    for rows, block in _luma_rows(a):
        np.rint(block, out=block)
        np.clip(block / top, 0.0, 1.0, out=grey[rows])
    return grey


def to_grey_float(arr: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """Convert a decoded image to the one grey representation.

    Parameters
    ----------
    arr : ndarray, shape (H, W) or (H, W, C) with C in 1..4, any integer, bool or float dtype
    bit_depth : int, optional
        Significant bits of an integer image; defaults to the dtype's width.

    Returns
    -------
    ndarray, shape (H, W), float32, values in [0, 1]

    Raises
    ------
    LsmError
        For NaN or infinite values, or an unsupported number of channels.
    """
    a = np.asarray(arr)
    if a.ndim == 3:
        channels = a.shape[2]
        if channels in (1, 2):  # grey or grey + alpha
            a = a[..., 0]
        elif channels in (3, 4):  # RGB or RGBA: luminance, alpha dropped
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a[..., :3]).all():
                raise LsmError(_nan_message(a[..., :3]))
            if np.issubdtype(a.dtype, np.integer) and np.iinfo(a.dtype).min == 0:
                return _scaled_luminance(a, bit_depth)
            a = luminance(a)
        else:
            raise LsmError(f"the image has {channels} channels; expected grey, RGB or RGBA")
    elif a.ndim != 2:
        raise LsmError(f"the image has {a.ndim} dimensions; expected a 2-D picture")

    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:  # signed: shift into the unsigned range of the same width
            out = (a.astype(np.float64) - info.min) / (float(info.max) - info.min)
            return out.astype(np.float32)
        bits = bit_depth if bit_depth and bit_depth <= info.bits else info.bits
        top = float(2**bits - 1)
        return np.clip(a.astype(np.float32) / top, 0.0, 1.0)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a).all():
            raise LsmError(_nan_message(a))
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.ascontiguousarray(a)
        if hi == lo:
            return np.zeros_like(a)
        return ((a - lo) / (hi - lo)).astype(np.float32)
    raise LsmError(f"unsupported pixel type {a.dtype}")


def _nan_message(a: np.ndarray) -> str:
    nan = int(np.isnan(a).sum())
    inf = int(np.isinf(a).sum())
    parts = []
    if nan:
        parts.append(f"{nan:,} NaN (not-a-number)")
    if inf:
        parts.append(f"{inf:,} infinite")
    return f"the image holds {' and '.join(parts)} pixel values; export it again without masked pixels"


# -------------------------------------------------------------------------------------------- channels, focus

_TRANSMITTED_WORDS = frozenset(
    {"dic", "td", "trans", "transmitted", "bf", "bright", "brightfield", "phase", "tl", "nomarski"}
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")


def channel_words(name: str) -> list[str]:
    """The words of a channel name, lower case: split at anything not a letter and at camel case
    ("TransmittedLight" -> transmitted, light; "DIC1" -> dic; "5-FAM/pH 9.0" -> fam, p, h)."""
    return [w.lower() for w in _WORD.findall(name or "")]


def transmitted_channel(channels: list[str]) -> int | None:
    """The index of the transmitted-light channel (DIC, brightfield, phase), found by name; None when no
    name says so (the caller asks the user).

    A name matches when one of its words (:func:`channel_words`, case-insensitive) is DIC, Nomarski, TD,
    Trans, Transmitted, TL, BF, Bright, Brightfield or Phase: "TD", "DIC 1", "Bright", "Transmitted light",
    "BF", "TL Brightfield", "PMT Trans", "Phase contrast" match. Whole words only, so "GFP", "BFP",
    "5-FAM/pH 9.0" (pH is not phase), "Dichroic" and "Brightness" (a display setting, not a contrast method)
    do not. When several match, the first. A file with one channel: that channel, whatever its name.
    """
    if len(channels) == 1:
        return 0
    for index, name in enumerate(channels):
        if any(word in _TRANSMITTED_WORDS for word in channel_words(name)):
            return index
    return None


def focus_score(plane: np.ndarray) -> float:
    """Variance of the Laplacian of Gaussian (sigma 1 pixel) of one plane normalised to [0, 1] by its own
    1st and 99th percentiles.

    The variance of the Laplacian is the focus measure of Pech-Pacheco et al., "Diatom autofocusing in
    brightfield microscopy: a comparative study", ICPR 2000 (vol. 3, pp. 314-317): defocus removes high
    spatial frequencies, which the Laplacian measures. Two changes make it robust on camera images:
    normalising each plane by its own percentiles makes the score independent of exposure, bit depth and
    offset (a plane that is merely brighter does not win); and a Gaussian of 1 pixel before the Laplacian
    keeps pixel noise out of it (the plain Laplacian of a noisy, badly defocused plane can score as high as
    the focused one, because the normalisation stretches its noise). A constant plane scores 0. ``plane``
    is (H, W), or (H, W, 3|4) colour (its luminance is used).
    """
    a = np.asarray(plane)
    if a.ndim == 3:
        a = luminance(a)
    if a.ndim != 2:
        raise LsmError(f"a focus score needs a 2-D plane, got shape {a.shape}")
    f = a.astype(np.float32)
    if not np.isfinite(f).all():
        finite = f[np.isfinite(f)]
        f = np.where(np.isfinite(f), f, finite.mean() if finite.size else 0.0).astype(np.float32)
    lo, hi = np.percentile(f, (1.0, 99.0))
    if not hi > lo:
        return 0.0
    f = np.clip((f - lo) / (hi - lo), 0.0, 1.0)
    return float(ndimage.gaussian_laplace(f, _FOCUS_SIGMA).var())


_FOCUS_SIGMA = 1.0  # pixels: the Gaussian of the Laplacian of Gaussian in focus_score


def best_focus(planes: Iterable[np.ndarray]) -> tuple[int, list[float]]:
    """The index of the best-focused plane of a z stack and the focus score of each (:func:`focus_score`:
    the variance of the Laplacian of Gaussian after percentile normalisation, after Pech-Pacheco et al.
    2000). Planes are
    read one at a time (pass a generator such as :meth:`readers.base.Reader.z_planes` to hold one in memory); the
    first of equal best scores wins. LsmError for no plane."""
    scores = [focus_score(p) for p in planes]
    if not scores:
        raise LsmError("no plane to choose the focus from")
    return int(np.argmax(scores)), scores
