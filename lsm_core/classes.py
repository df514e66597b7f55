"""The two classification tasks of the paper and their ordered class names."""

from __future__ import annotations

from lsm_core.errors import LsmError

TASKS: dict[str, tuple[str, ...]] = {
    # LT-HSC = LSK CD150+CD48-, ST-HSC = LSK CD150-CD48-, MPP = LSK CD150-CD48+
    "lsm": ("LT-HSC", "ST-HSC", "MPP"),
    # aged (24 months) vs young (8-10 weeks) LT-HSC
    "aging": ("young", "aged"),
}

# the published method this project rebuilds, as every text that cites it says it
PAPER_DOI = "10.1186/s13287-024-03682-8"
PAPER_AUTHORS = "Wang et al."
PAPER_TITLE = (
    "Deep learning-based predictive classification of functional subpopulations of hematopoietic stem cells and "
    "multipotent progenitors"
)
PAPER_JOURNAL = "Stem Cell Res Ther 15:74 (2024)"
PAPER_CITATION = f'{PAPER_AUTHORS}, "{PAPER_TITLE}", {PAPER_JOURNAL}, doi:{PAPER_DOI}'

TASK_TITLES = {
    "lsm": "LSM: LT-HSC / ST-HSC / MPP",
    "aging": "Aging: young / aged HSC",
}


def task_classes(task: str) -> tuple[str, ...]:
    try:
        return TASKS[task]
    except KeyError:
        raise LsmError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}") from None
