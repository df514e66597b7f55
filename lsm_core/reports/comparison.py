"""What a comparison of batches across groups of mice is (lsm_core.reports.compare.build makes one): its
tables, tests and trends, read by the page, the workbook and the methods text (lsm_core.reports.methods)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from lsm_core.reports.stats import AgeBin, classes_tested, units_of


@dataclass
class Comparison:
    classes: list[str]
    task: str
    by: str
    threshold: float
    table: pd.DataFrame
    groups: pd.DataFrame
    tests: pd.DataFrame
    pooled: dict
    trends: dict
    bins: list[AgeBin] | None
    excluded: int = 0  # cells of these batches that reviewers marked as not cells: counted nowhere here
    warnings: list[str] = field(default_factory=list)  # mixed models (when allowed), pixel sizes, channels
    odds: pd.DataFrame = field(default_factory=pd.DataFrame)  # the model of cells within mice (stats.odds_model)
    # what the per-mouse summaries, tests and trends ran on: "fraction" (counted) or "corrected" (for the model's
    # errors, lsm_core.reports.correction); the odds model stays on counts
    measure: str = "fraction"
    profiles: list[str] = field(default_factory=list)  # each model's error profile: its label, the cells, source
    # cell size (lsm_core.imaging.shape): per-mouse medians tested as fractions are (stats.compare_groups on the
    # table's median_diameter_um_all), and a linear mixed model of each cell's diameter (stats.size_mixed_model)
    size_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    size_model: pd.DataFrame = field(default_factory=pd.DataFrame)
    sized_cells: int = 0  # cells with a size in µm
    sizes_unknown: int = 0  # cells outlined at the model's default pixel size: no size in µm

    @property
    def on_corrected(self) -> bool:
        return self.measure == "corrected"

    @property
    def tested(self) -> list[str]:
        """The classes tested and modelled (stats.classes_tested): of two classes only the last."""
        return classes_tested(self.classes)

    @property
    def corrected(self) -> bool:
        """Whether p-values are Holm-corrected across classes: only where more than one class is tested."""
        return len(self.tested) > 1


def batches_of(table: pd.DataFrame) -> dict[int, object]:
    """Every batch of a per-mouse table (a unit pools the batches of one mouse: its ``batches``) -> its unit's
    group (None when it is in none)."""
    groups = table["group"] if "group" in table else [None] * len(table)
    return {b: group for ids, group in zip(units_of(table), groups) for b in ids}
