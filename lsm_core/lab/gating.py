"""Reporter gates: training labels from a reporter channel measured in each cell (issue #15, "reporter as label").

A lab that images reporter mice (Evi1-GFP, ...) next to the DIC channel can label cells by their reporter level
instead of by a FACS gate: ``GFP high -> LT-HSC, GFP low -> MPP``. A gate is one or more clauses separated by
``;``, ``,`` or new lines, each ``TEST -> CLASS``:

- ``GFP > 1500 -> LT-HSC`` (also ``>=``, ``<``, ``<=``): a threshold in the channel's own units, on the cell's
  mean intensity inside its mask minus the image's background (:mod:`lsm_core.imaging.reporters`);
- ``GFP high -> LT-HSC`` / ``GFP low -> MPP``: above / at or below Otsu's threshold of that batch's cells
  (:func:`lsm_core.imaging.reporters.otsu_threshold`; each batch its own, recorded with the model);
- ``400 <= GFP < 1500 -> ST-HSC``: between two thresholds;
- ``GFP.integrated > 2e5 -> LT-HSC``: the integrated signal (mean x area) instead of the mean (``GFP.mean``
  is the default, said explicitly);
- a channel name with spaces or signs is quoted: ``"FM 4-64" > 300 -> MPP``.

Every clause reads the same channel and measure, names a class of the task, and no two clauses may cover the
same values. A cell that no clause covers (between two thresholds) is left out, and so is a cell with no value
for the channel; both are counted. This module is the rule alone (text in, labels of values out); reading the
cells of batches and cutting their crops is :func:`lsm_core.lab.training_data.from_gate`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lsm_core.classes import task_classes
from lsm_core.errors import LsmError

MEASURES = ("mean", "integrated")
EXAMPLE = "GFP > 1500 -> LT-HSC; GFP < 400 -> MPP"
SYNTAX = (
    "write one `TEST -> CLASS` per clause, separated by `;`: `GFP > 1500 -> LT-HSC`, `GFP high -> LT-HSC` "
    "(above the batch's Otsu threshold), `GFP low -> MPP` or `400 < GFP < 1500 -> ST-HSC`"
)

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CHANNEL = r"(?P<channel>\"[^\"]+\"|'[^']+'|[^\s<>=≤≥\"']+?)(?:\.(?P<measure>mean|integrated))?"
_ARROW = r"\s*(?:->|→|=>)\s*(?P<cls>\S.*?)"
_COMPARE = re.compile(rf"^{_CHANNEL}\s*(?P<op><=|>=|<|>|≤|≥)\s*(?P<value>{_NUM}){_ARROW}$", re.IGNORECASE)
_LEVEL = re.compile(rf"^{_CHANNEL}\s+(?P<level>high|low){_ARROW}$", re.IGNORECASE)
_RANGE = re.compile(
    rf"^(?P<low>{_NUM})\s*(?P<op1><=|<|≤)\s*{_CHANNEL}\s*(?P<op2><=|<|≤)\s*(?P<high>{_NUM}){_ARROW}$", re.IGNORECASE
)
_SPLIT = re.compile(r"[;\n]|,(?!\s*\d)")  # a comma followed by a digit is a number's, not a separator


@dataclass(frozen=True)
class Bound:
    """One end of a clause's range: a number, or Otsu's threshold of the batch (``value`` None)."""

    value: float | None
    inclusive: bool

    def at(self, otsu: float | None) -> float:
        if self.value is not None:
            return self.value
        if otsu is None:
            raise ValueError("Otsu's threshold is needed")
        return otsu

    def text(self) -> str:
        return "Otsu's threshold" if self.value is None else f"{self.value:g}"


@dataclass(frozen=True)
class Clause:
    """``low < value < high -> cls`` (either end may be open: None)."""

    cls: str
    low: Bound | None
    high: Bound | None
    text: str  # in the canonical form, e.g. "GFP > 1500 -> LT-HSC"

    @property
    def uses_otsu(self) -> bool:
        return any(b is not None and b.value is None for b in (self.low, self.high))

    def interval(self, otsu: float | None) -> tuple[float, bool, float, bool]:
        """(low, low included, high, high included) with Otsu's threshold ``otsu`` put in."""
        low = (self.low.at(otsu), self.low.inclusive) if self.low else (-math.inf, False)
        high = (self.high.at(otsu), self.high.inclusive) if self.high else (math.inf, False)
        return low[0], low[1], high[0], high[1]

    def covers(self, values: np.ndarray, otsu: float | None) -> np.ndarray:
        lo, lo_in, hi, hi_in = self.interval(otsu)
        above = values >= lo if lo_in else values > lo
        below = values <= hi if hi_in else values < hi
        return above & below


def _overlap(a: tuple[float, bool, float, bool], b: tuple[float, bool, float, bool]) -> bool:
    lo = max((a[0], not a[1]), (b[0], not b[1]))  # the higher low end; excluded wins a tie
    hi = min((a[2], a[3]), (b[2], b[3]))  # the lower high end; excluded wins a tie
    return lo[0] < hi[0] or (lo[0] == hi[0] and not lo[1] and hi[1])


def _empty(i: tuple[float, bool, float, bool]) -> bool:
    return not (i[0] < i[2] or (i[0] == i[2] and i[1] and i[3]))


@dataclass(frozen=True)
class Gate:
    """A parsed gate: one channel, one measure (``mean`` or ``integrated``), clauses that do not overlap."""

    channel: str
    measure: str
    clauses: tuple[Clause, ...]

    @property
    def text(self) -> str:
        """The gate in its canonical form, as the model records it."""
        return "; ".join(c.text for c in self.clauses)

    @property
    def uses_otsu(self) -> bool:
        return any(c.uses_otsu for c in self.clauses)

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(c.cls for c in self.clauses))

    @property
    def index(self) -> int:
        """Where the measure is in a cell's stored signal ``[mean, integrated]``."""
        return MEASURES.index(self.measure)

    def check(self, otsu: float | None = None, batch: str | None = None) -> None:
        """LsmError when two clauses cover the same values, with Otsu's threshold ``otsu`` (of ``batch``) put in."""
        for i, a in enumerate(self.clauses):
            for b in self.clauses[i + 1 :]:
                if _overlap(a.interval(otsu), b.interval(otsu)):
                    said = ""
                    if batch and otsu is not None:
                        said = f" (in {batch}, Otsu's threshold of {self.channel} is {otsu:g})"
                    raise LsmError(
                        f"the gate's clauses `{a.text}` and `{b.text}` overlap{said}: a cell cannot be both "
                        f"{a.cls} and {b.cls}; make their ranges apart"
                    )

    def assign(self, values: np.ndarray, otsu: float | None = None) -> list[str | None]:
        """The class of each value (NaN: no value), or None where no clause covers it."""
        values = np.asarray(values, dtype=np.float64)
        out: list[str | None] = [None] * len(values)
        finite = np.isfinite(values)
        for clause in self.clauses:
            for i in np.flatnonzero(clause.covers(values, otsu) & finite):
                out[int(i)] = clause.cls
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.text, "channel": self.channel, "measure": self.measure, "classes": self.classes}


def _channel_name(raw: str) -> str:
    return raw[1:-1].strip() if raw[:1] in "\"'" else raw


def _class_of(name: str, classes: list[str], clause: str, task: str) -> str:
    lookup = {c.casefold(): c for c in classes}
    found = lookup.get(name.strip().casefold())
    if found is None:
        raise LsmError(f"`{clause}`: {name.strip()!r} is not one of the {task} classes ({', '.join(classes)})")
    return found


def _op(op: str) -> str:
    return {"≤": "<=", "≥": ">="}.get(op, op)


def _parse_clause(clause: str, classes: list[str], task: str) -> tuple[str, str, Clause, str | None]:
    """(channel, measure, clause, form) of one clause's text; ``form`` is the test after the channel (``> 1500``,
    ``high``), None for a range."""
    m = _COMPARE.match(clause)
    if m:
        op, value = _op(m["op"]), float(m["value"])
        if not math.isfinite(value):
            raise LsmError(f"`{clause}`: the threshold must be a finite number")
        bound = Bound(value, inclusive="=" in op)
        low, high = (bound, None) if op.startswith(">") else (None, bound)
        form = f"{op} {value:g}"
    else:
        m = _LEVEL.match(clause)
        if m:
            level = m["level"].lower()
            # high: above Otsu's threshold; low: at or below it (together they label every cell)
            low, high = (Bound(None, False), None) if level == "high" else (None, Bound(None, True))
            form = level
        else:
            m = _RANGE.match(clause)
            if not m:
                raise LsmError(f"cannot read the gate clause `{clause}`: {_hint(clause)}")
            low = Bound(float(m["low"]), inclusive="=" in _op(m["op1"]))
            high = Bound(float(m["high"]), inclusive="=" in _op(m["op2"]))
            form = None
    channel = _channel_name(m["channel"])
    if not channel:
        raise LsmError(f"`{clause}`: the channel's name is empty")
    measure = (m["measure"] or "mean").lower()
    cls = _class_of(m["cls"], classes, clause, task)
    parsed = Clause(cls, low, high, _render(channel, measure, cls, low, high, form))
    if _empty(parsed.interval(0.0)):
        raise LsmError(f"`{clause}`: no value is between {low.text() if low else ''} and {high.text() if high else ''}")
    return channel, measure, parsed, form


def _render(channel: str, measure: str, cls: str, low: Bound | None, high: Bound | None, form: str | None) -> str:
    """A clause in the canonical form: ``GFP > 1500 -> LT-HSC``, ``GFP.integrated high -> LT-HSC``,
    ``400 <= GFP < 1500 -> ST-HSC``; a name with spaces or signs in quotes."""
    named = f'"{channel}"' if re.search(r"[\s<>=.,;\"'≤≥]", channel) else channel
    named += f".{measure}" if measure != "mean" else ""
    if form is None:
        assert low is not None and high is not None
        text = f"{low.text()} {'<=' if low.inclusive else '<'} {named} {'<=' if high.inclusive else '<'} {high.text()}"
    else:
        text = f"{named} {form}"
    return f"{text} -> {cls}"


def _hint(clause: str) -> str:
    if not re.search(r"->|→|=>", clause):
        return f"it names no class (`-> CLASS`); {SYNTAX}"
    if re.search(r"\d,\d", clause):
        return "write numbers without thousands separators (1500, not 1,500)"
    if re.search(r"(?:^|\s)(?:high|low)\s*\S*\d", clause, re.IGNORECASE):
        return "`high` and `low` take no number: they mean above and below Otsu's threshold of the batch"
    return SYNTAX


def parse_gate(text: str, task: str) -> Gate:
    """The gate written in ``text`` for a task's classes (see the module docstring); LsmError names the clause
    it cannot accept and why."""
    classes = list(task_classes(task))
    pieces = [p.strip() for p in _SPLIT.split(text or "") if p.strip()]
    if not pieces:
        raise LsmError(f"write a gate, e.g. `{EXAMPLE}`")
    parsed = [(piece, *_parse_clause(piece, classes, task)) for piece in pieces]
    first_text, channel, measure, _, _ = parsed[0]
    for piece, ch, ms, _, _ in parsed[1:]:
        if ch.casefold() != channel.casefold():
            raise LsmError(f"a gate reads one channel: `{first_text}` reads {channel}, `{piece}` reads {ch}")
        if ms != measure:
            raise LsmError(
                f"a gate reads one measure of its channel: `{first_text}` reads its {measure}, `{piece}` its {ms}"
            )
    # every clause written with the first one's spelling of the channel
    clauses = tuple(replace(c, text=_render(channel, measure, c.cls, c.low, c.high, form)) for *_, c, form in parsed)
    gate = Gate(channel, measure, clauses)
    if len(gate.classes) < 2:
        raise LsmError(
            f"the gate names only {gate.classes[0]}: training needs cells of at least two classes, e.g. `{EXAMPLE}`"
        )
    # overlaps that do not depend on the data: between numbers, or between clauses that all use Otsu's
    # threshold (any value stands for it); a number against Otsu's threshold is checked per batch
    for i, a in enumerate(gate.clauses):
        for b in gate.clauses[i + 1 :]:
            if a.uses_otsu == b.uses_otsu:
                Gate(channel, measure, (a, b)).check(0.0 if a.uses_otsu else None)
    return gate


def parse_batch_ids(text: str) -> list[int]:
    """Batch ids written as ``12 13, 14`` (spaces, commas or semicolons between them), in order, once each."""
    ids: list[int] = []
    for part in re.split(r"[\s,;]+", text or ""):
        if not part:
            continue
        if not part.isdigit():
            raise LsmError(f"{part!r} is not a batch id: write the batches' numbers, e.g. `12, 13`")
        if int(part) not in ids:
            ids.append(int(part))
    return ids
