"""The microscope's calibration: the pixel size an image's cells are found at, and where it came from.

One rule decides it (:func:`resolve`), wherever cells are found (the command line, the worker, training data
read from files): what the user set (``--pixel-size``, the Classify page's "Pixel size", a re-run at another
pixel size), else what the image's file states, else the lab's setting (``LSM_PIXEL_SIZE_UM``), else the
pixel size the model was trained at. Where it came from is one of four values (:class:`CalibrationSource`),
stored as they are in ``images.pixel_size_source`` and every export; :data:`SOURCE_WORDS` says them to
people (the pages, the report, and the sentence cell finding writes when an image gives no cell, which is
stored with the image: hence the words live here, beside the values, and not in the reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CalibrationSource(StrEnum):
    """Where a pixel size came from, as stored (``images.pixel_size_source``) and exported."""

    USER = "user"
    FILE = "file"
    SETTING = "setting"
    MODEL_DEFAULT = "model default"

    @property
    def words(self) -> str:
        """Where the pixel size came from, as people read it ("It is 0.2 µm/px, the model's default.")."""
        return SOURCE_WORDS[self]


SOURCE_WORDS = {
    CalibrationSource.USER: "set for this batch",
    CalibrationSource.FILE: "stated in the file",
    CalibrationSource.SETTING: "from LSM_PIXEL_SIZE_UM",
    CalibrationSource.MODEL_DEFAULT: "the model's default",
}
"""Each source in words, the one place they are written (keys are the stored strings too: a StrEnum)."""


@dataclass(frozen=True)
class Calibration:
    """A pixel size in micrometres per pixel and where it came from."""

    um_per_px: float
    source: CalibrationSource

    @property
    def words(self) -> str:
        return self.source.words

    def with_file(self, file: float | None) -> Calibration:
        """This calibration, decided before an image's file was read, once the file is read and states ``file``
        (None: nothing): the same rule (:func:`resolve`) with this value in its own place, so that what the file
        states replaces a setting or the model's default but never what the user set.

        >>> resolve(setting=0.25, model_default=0.2).with_file(0.1).source
        <CalibrationSource.FILE: 'file'>
        """
        here = {self.source: self.um_per_px}
        return resolve(
            user=here.get(CalibrationSource.USER),
            file=file or here.get(CalibrationSource.FILE),
            setting=here.get(CalibrationSource.SETTING),
            model_default=self.um_per_px,
        )


def resolve(
    user: float | None = None,
    file: float | None = None,
    setting: float | None = None,
    *,
    model_default: float,
) -> Calibration:
    """The pixel size to find cells at: ``user`` (set for this run or batch), else ``file`` (what the image's
    file states), else ``setting`` (LSM_PIXEL_SIZE_UM), else ``model_default`` (what the model was trained at).
    None or 0 means not stated.

    >>> resolve(file=0.1, setting=0.25, model_default=0.2)
    Calibration(um_per_px=0.1, source=<CalibrationSource.FILE: 'file'>)
    """
    for value, source in (
        (user, CalibrationSource.USER),
        (file, CalibrationSource.FILE),
        (setting, CalibrationSource.SETTING),
    ):
        if value:
            return Calibration(float(value), source)
    return Calibration(float(model_default), CalibrationSource.MODEL_DEFAULT)


def recorded(um_per_px: float | None, source: str | None, *, model_default: float) -> Calibration:
    """The calibration an image's cells were found at, as its row holds it (``images.pixel_size_um`` and
    ``pixel_size_source``, the stored value); a row that holds none (not classified yet, or before calibrations
    were recorded) reads as the model's default."""
    if um_per_px and source:
        return Calibration(float(um_per_px), CalibrationSource(source))
    return resolve(model_default=model_default)
