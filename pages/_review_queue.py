"""The review queue (issue #17 items 1 and 6): the cells of one batch (its results page) or of several (the
Review page: one queue for a person's batches), in the order to look at them (most uncertain first, by
class, by score, random), the current one large with its probabilities, and a grid of the cells around it.
One click, or one key on the current cell (1, 2, 3: a class; X: not a cell; arrows: move), says what a cell
really is; labels and their history live in lsm_core.lab.cell_labels.

Imported by pages; not a page itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image as PILImage

from db import queries
from db.schema import Image
from lsm_core.errors import LsmError
from lsm_core.imaging.shape import size_words
from lsm_core.lab import accounts, cell_labels
from lsm_core.lab.lab import Lab
from lsm_core.reports.report import cell_picture
from lsm_core.reports.text import escape_markdown
from pages._common import image_pixels

ORDER_NAMES = {
    "uncertain": "most uncertain first",
    "class": "by predicted class",
    "score": "lowest score first",
    "random": "random",
}
GRID = 12  # cells in the grid around the current one
COLUMNS = 4
TILE_PX = 96
LARGE_PX = 224
NOT_A_CELL = "not a cell"


@dataclass(frozen=True)
class Scope:
    """What is reviewed: batches of one model's classes, with each one's owner and how its images are read."""

    batch_ids: list[int]
    classes: list[str]
    owners: dict[int, str]  # batch id -> owner
    planes: dict[int, tuple[str | None, int | None]]  # batch id -> (channel, z) its images were read at
    names: dict[int, str] | None = None  # batch id -> name, shown beside each cell when several are reviewed

    @classmethod
    def of_report(cls, report) -> Scope:
        """The one batch of a results page."""
        b = report.batch_id
        return cls([b], list(report.classes), {b: report.owner}, {b: (report.channel, report.z)})


def _say(lab, cell_id: int, me: str, label: str | None, excluded: str | None, then: int | None, key: str) -> None:
    """Button callback: store the label, then move the review on to ``then`` (a cell id)."""
    try:
        cell_labels.set_label(lab, cell_id, me, label=label, excluded=excluded)
    except LsmError as exc:
        st.session_state[f"{key}_review_error"] = str(exc)
        return
    if then is not None:
        st.session_state[f"{key}_review_cell"] = then


def _move(cell_id: int | None, key: str) -> None:
    if cell_id is not None:
        st.session_state[f"{key}_review_cell"] = cell_id


def _tile_changed(lab, cell_id: int, me: str, widget: str, key: str) -> None:
    """A grid tile's choice changed: a class, or not a cell (for the reason chosen above). Nothing chosen (the
    cell's label clicked again) keeps the label: the tile is drawn again with it (a new widget), and taking a
    label back is its own button."""
    choice = st.session_state.get(widget)
    reason = st.session_state.get(f"{key}_review_reason", "debris")
    if choice is None:
        redraw = f"{key}_tile_redraw_{cell_id}"
        st.session_state[redraw] = st.session_state.get(redraw, 0) + 1
    elif choice == NOT_A_CELL:
        _say(lab, cell_id, me, None, reason, None, key)
    else:
        _say(lab, cell_id, me, choice, None, None, key)


def _picture(item: cell_labels.QueueItem, scope: Scope, size: int) -> PILImage.Image | None:
    channel, z = scope.planes.get(item.batch_id, (None, None))
    pixels = image_pixels(item.sha256, item.page, channel, z) if item.sha256 else None
    return cell_picture(pixels, item.box, size) if pixels is not None else None


def _where(item: cell_labels.QueueItem, scope: Scope) -> str:
    where = f"cell {item.idx} of {item.file}" + (f" (page {item.page})" if item.page > 1 else "")
    if scope.names:
        where += f", batch #{item.batch_id} {scope.names.get(item.batch_id, '')}".rstrip()
    return where


def _flags(lab, items: list[cell_labels.QueueItem]) -> dict[int, str]:
    """The quality flags of these cells (cell id -> ``added``, ``edge``, ...; empty: none)."""
    with lab() as s:
        return {c.id: c.flags for c in queries.cells_by_id(s, [q.cell_id for q in items])}


def flagged(text: str, flags: str | None) -> str:
    """``text`` with the cell's flags after it: ``added`` (a person added the cell: said wherever it is shown)
    and ``edge``; ``single`` (a whole image is the cell) says nothing beside a cell and is left out."""
    shown = [f for f in (flags or "").split(",") if f and f != "single"]
    return f"{text} · {', '.join(shown)}" if shown else text


def review_section(lab: Lab, scope: Scope, me: str, key: str, heading: bool = True) -> None:
    """The review queue of ``scope``'s batches for person ``me``."""
    classes = scope.classes
    if heading:
        st.subheader("Review")
    st.caption(
        "Say what each cell really is. Your labels are kept beside the model's prediction, never over it; a change "
        "keeps the history, and colleagues keep their own labels. Keys on the framed cell: "
        + ", ".join(f"**{i + 1}** {escape_markdown(c)}" for i, c in enumerate(classes[:9]))
        + ", **X** not a cell, **←/→** previous/next. Cells marked as not a cell count nowhere."
    )
    with lab() as s:
        allowed = {b: accounts.may_change(lab, s, me, owner) for b, owner in scope.owners.items()}
    if not any(allowed.values()):
        whose = ", ".join(sorted(set(scope.owners.values())))
        belongs = "This batch belongs" if len(scope.owners) == 1 else "These batches belong"
        st.info(
            f"{belongs} to {escape_markdown(whose)}: "
            "only they or an administrator can label its cells. You can look at them."
        )
    c = st.columns([2, 2, 2])
    order = c[0].selectbox("Order", list(ORDER_NAMES), format_func=ORDER_NAMES.__getitem__, key=f"{key}_review_order")
    reason = c[1].selectbox(
        "Not a cell because",
        list(cell_labels.EXCLUSIONS),
        format_func=cell_labels.EXCLUSIONS.__getitem__,
        key=f"{key}_review_reason",
        help="What X and the grid's 'not a cell' record.",
    )
    only_new = c[2].toggle("Only cells I have not labelled", key=f"{key}_review_new")
    if order is None or reason is None:  # never: both have options and a default (typed optional by Streamlit)
        return
    items = cell_labels.queue(lab, scope.batch_ids, me, order, unlabelled_only=only_new, seed=scope.batch_ids[0])
    error = st.session_state.pop(f"{key}_review_error", None)
    if error:
        st.error(escape_markdown(error))
    if not items:
        st.success("You have labelled every cell here." if only_new else "There are no cells to review here.")
        return
    ids = [q.cell_id for q in items]
    current = st.session_state.get(f"{key}_review_cell")
    pos = ids.index(current) if current in ids else 0
    item = items[pos]
    may = allowed.get(item.batch_id, False)
    after = ids[pos + 1] if pos + 1 < len(ids) else None
    before = ids[pos - 1] if pos > 0 else None
    # with "only unlabelled", the labelled cell leaves the queue: the next one takes its place
    then = after if after is not None else (before if only_new else item.cell_id)
    mine = sum(q.mine is not None for q in items)
    start = (pos // GRID) * GRID
    tiles = items[start : start + GRID]
    flags = _flags(lab, [item, *tiles])
    st.caption(f"Cell {pos + 1:,} of {len(items):,} in this order · you labelled {mine:,} of them")

    with st.container(border=True):
        left, right = st.columns([1, 2])
        picture = _picture(item, scope, LARGE_PX)
        where = escape_markdown(_where(item, scope))  # file and batch names are the user's text: never Markdown
        if picture is not None:
            left.image(picture, caption=where)
        else:
            left.caption(f"{where}: the stored image could not be read back")
        right.markdown(
            f"**{escape_markdown(flagged(_where(item, scope), flags.get(item.cell_id, '')))}** · model: "
            f"**{escape_markdown(item.predicted)}** ({item.score:.2f}) · margin {item.margin:.2f}"
        )
        for cls, p in zip(classes, item.probs, strict=False):
            right.progress(min(max(p, 0.0), 1.0), text=f"{escape_markdown(cls)}: {p:.3f}")
        right.caption(size_words(item.diameter_um, item.circularity))
        said = item.mine.text if item.mine is not None else "no label"
        line = f"Your label: **{escape_markdown(said)}**"
        if item.consensus is not None:
            line += f" · counts as: **{escape_markdown(item.consensus.text)}**"
            if item.consensus.disputed:
                line += f" (disputed: {escape_markdown(item.consensus.last_by)}'s newest label counts)"
        right.markdown(line)
        buttons = right.columns(len(classes) + 1)
        for i, cls in enumerate(classes):
            buttons[i].button(
                cls,
                key=f"{key}_review_class_{i}",
                shortcut=str(i + 1) if i < 9 else None,
                type="primary" if item.mine is not None and item.mine.label == cls else "secondary",
                disabled=not may,
                on_click=_say,
                args=(lab, item.cell_id, me, cls, None, then, key),
                width="stretch",
            )
        buttons[-1].button(
            NOT_A_CELL,
            key=f"{key}_review_not",
            shortcut="X",
            type="primary" if item.mine is not None and item.mine.excluded else "secondary",
            disabled=not may,
            on_click=_say,
            args=(lab, item.cell_id, me, None, reason, then, key),
            width="stretch",
        )
        nav = right.columns(3)
        nav[0].button("Previous", key=f"{key}_review_prev", shortcut="Left", disabled=before is None,
                      on_click=_move, args=(before, key), width="stretch")  # fmt: skip
        nav[1].button("Next", key=f"{key}_review_next", shortcut="Right", disabled=after is None,
                      on_click=_move, args=(after, key), width="stretch")  # fmt: skip
        nav[2].button(
            "Take my label back",
            key=f"{key}_review_back",
            disabled=not may or item.mine is None,
            on_click=_say,
            args=(lab, item.cell_id, me, None, None, None, key),
            width="stretch",
        )
        past = cell_labels.history(lab, item.cell_id)
        if past:
            with right.expander(f"History of this cell's labels ({len(past)})"):
                st.dataframe(
                    pd.DataFrame(
                        [
                            {
                                "when": x.at.strftime("%Y-%m-%d %H:%M:%S"),
                                "who": x.labelled_by,
                                "label": x.text if not x.withdrawn else "taken back",
                                "model said": f"{x.predicted} ({x.score:.2f})",
                                "current": x.current,
                            }
                            for x in past
                        ]
                    ),
                    hide_index=True,
                    width="stretch",
                )

    st.caption(
        f"Cells {start + 1:,} to {start + len(tiles):,}: pick a class under a cell to label it in one click "
        "(its label clicked again stays; “Take my label back” takes it back); the framed one is the cell the keys "
        "act on."
    )
    options = [*classes, NOT_A_CELL]
    for row in range(0, len(tiles), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, q in zip(cols, tiles[row : row + COLUMNS], strict=False):
            with col.container(border=q.cell_id == item.cell_id):
                picture = _picture(q, scope, TILE_PX)
                if picture is not None:
                    st.image(picture, width=TILE_PX)
                where = flagged(_where(q, scope), flags.get(q.cell_id, ""))
                st.caption(f"{escape_markdown(q.predicted)} {q.score:.2f} · {escape_markdown(where)}")
                now = None if q.mine is None else (NOT_A_CELL if q.mine.excluded else q.mine.label)
                redrawn = st.session_state.get(f"{key}_tile_redraw_{q.cell_id}", 0)
                widget = f"{key}_tile_{q.cell_id}_{now}_{redrawn}"
                st.segmented_control(
                    "label",
                    options,
                    default=now,
                    key=widget,
                    label_visibility="collapsed",
                    disabled=not allowed.get(q.batch_id, False),
                    on_change=_tile_changed,
                    args=(lab, q.cell_id, me, widget, key),
                )
                if q.mine is not None and allowed.get(q.batch_id, False):
                    st.button(
                        "Take my label back",
                        key=f"{key}_tile_back_{q.cell_id}",
                        type="tertiary",
                        on_click=_say,
                        args=(lab, q.cell_id, me, None, None, None, key),
                    )
                if q.cell_id != item.cell_id:
                    st.button(
                        "Look closer",
                        key=f"{key}_review_open_{q.cell_id}",
                        type="tertiary",
                        on_click=_move,
                        args=(q.cell_id, key),
                    )


# --- fixing detection on a field of view (issue #17 item 3) ----------------------------------------------
def _cell_of(point: dict) -> int | None:
    data = point.get("customdata")
    if isinstance(data, list):
        data = data[0] if data else None
    try:
        return int(data) if data is not None else None
    except (TypeError, ValueError):
        return None


def field_pick(selection) -> tuple[list[int], tuple[float, float] | None]:
    """What a click or a box selection on an editable field figure (lsm_core.reports.report.field_figure)
    picked: the cells whose handles it hit or enclosed (a click on a box wins over the clear point under
    it), else the clear point clicked, or the centre of a rectangle that enclosed no box (where a missed cell
    is, to add one there), else nothing."""
    if not selection:
        return [], None
    points = list(selection.get("points") or [])
    cells = list(dict.fromkeys(c for p in points if (c := _cell_of(p)) is not None and c >= 0))
    if cells:
        return cells, None
    clear = [p for p in points if _cell_of(p) == -1]
    if clear and not selection.get("box"):
        return [], (float(clear[0]["x"]), float(clear[0]["y"]))
    for box in selection.get("box") or []:
        xs, ys = box.get("x") or [], box.get("y") or []
        if len(xs) >= 2 and len(ys) >= 2:
            return [], ((float(min(xs)) + float(max(xs))) / 2, (float(min(ys)) + float(max(ys))) / 2)
    return [], None


def field_section(
    lab: Lab,
    image: Image,
    cells: list[queries.CellRow],
    scope: Scope,
    me: str,
    key: str,
    figure: Callable[[bool], go.Figure],
) -> None:
    """The field of view of ``image`` (with ``cells``, queries.CellRow) as ``figure`` (editable when ``me``
    may change the batch), and what a click or a drag on it does: a box clicked is reviewed here (a class,
    or not a cell), a box dragged around is marked as not a cell, a click where no cell is adds one (a job)."""
    with lab() as s:
        may = accounts.may_change(lab, s, me, scope.owners.get(image.batch_id, ""))
    chart_key = f"{key}_fov_{image.id}"
    if not may:
        st.plotly_chart(figure(False), width="stretch", key=chart_key)
        return
    st.caption(
        "Click a box to review its cell; click where the finder missed a cell to add it (a worker cuts and "
        "classifies it); to remove false boxes, choose the box select tool (the dotted square, top right) and "
        "drag a rectangle around them."
    )
    event = st.plotly_chart(
        figure(True), width="stretch", key=chart_key, on_select="rerun", selection_mode=("points", "box")
    )
    picked, point = field_pick(event.selection if event else None)
    by_id = {c.id: c for c in cells}
    picked = [c for c in picked if c in by_id]
    reason = st.session_state.get(f"{key}_review_reason", "debris")
    if len(picked) == 1:
        cell = by_id[picked[0]]
        with st.container(border=True):
            left, right = st.columns([1, 3])
            pixels = image_pixels(image.sha256, image.page, *scope.planes.get(image.batch_id, (None, None)))
            if pixels is not None:
                left.image(cell_picture(pixels, cell.box, TILE_PX * 2))
            where = flagged(f"cell {cell.cell} of {image.file}", cell.flags)
            right.markdown(
                f"**{escape_markdown(where)}** · model: **{escape_markdown(cell.predicted)}** ({cell.score:.2f})"
            )
            cols = right.columns(len(scope.classes) + 1)
            for i, cls in enumerate(scope.classes):
                cols[i].button(cls, key=f"{key}_fov_class_{i}", on_click=_say,
                               args=(lab, cell.id, me, cls, None, None, key), width="stretch")  # fmt: skip
            cols[-1].button(NOT_A_CELL, key=f"{key}_fov_not", on_click=_say,
                            args=(lab, cell.id, me, None, reason, None, key), width="stretch")  # fmt: skip
    elif len(picked) > 1:

        def remove(ids=tuple(picked)) -> None:
            for cell_id in ids:
                _say(lab, cell_id, me, None, reason, None, key)

        st.button(
            f"Mark the {len(picked)} selected boxes as not cells ({cell_labels.EXCLUSIONS.get(reason, reason)})",
            key=f"{key}_fov_remove",
            on_click=remove,
        )
    elif point is not None:
        _add_section(lab, image, scope, me, key, point)


def _add_section(lab: Lab, image: Image, scope: Scope, me: str, key: str, point: tuple[float, float]) -> None:
    """A click where no cell is: what the point looks like and the button that adds a cell there. Once added, the
    same point (still selected) says so instead of offering it again; a point where a cell is, or is being
    added, is refused here with why (lsm_core.lab.tasks.add_cell.submit says the same at the click, should a
    colleague have added one meanwhile): never a job that can only fail."""
    from lsm_core.lab.tasks import add_cell

    x, y = point
    spot = (image.id, round(x, 3), round(y, 3))
    added_key, error_key = f"{key}_fov_added", f"{key}_fov_error"

    def add() -> None:
        try:
            job_id = add_cell.submit(lab, image.id, x, y, me)
        except LsmError as exc:
            st.session_state[error_key] = str(exc)
        else:
            st.session_state[added_key] = (spot, f"A cell at ({x:.0f}, {y:.0f}) is being added (job {job_id}).")

    refused = st.session_state.pop(error_key, None)
    if refused:
        st.error(escape_markdown(refused))
    added = st.session_state.get(added_key)
    if added is not None and added[0] == spot:
        st.success(added[1])
        return
    st.session_state.pop(added_key, None)  # another point: the last one's message is done
    if refused:
        return
    # asked before the job is queued: a click on background would otherwise be classified as a cell
    channel, z = scope.planes.get(image.batch_id, (None, None))
    try:
        cell_like = add_cell.looks_like_a_cell(lab, image.id, x, y, image_pixels(image.sha256, image.page, channel, z))
    except LsmError as exc:
        st.error(escape_markdown(str(exc)))
        return
    if cell_like:
        st.button(f"Add a cell at ({x:.0f}, {y:.0f})", key=f"{key}_fov_add", on_click=add)
    else:
        st.warning(
            f"Nothing like a cell here: no cell's outline is traced at ({x:.0f}, {y:.0f}). Add one anyway? "
            "It is classified like any cell and flagged added; label it not a cell if it was a mistake."
        )
        st.button(f"Add a cell at ({x:.0f}, {y:.0f}) anyway", key=f"{key}_fov_add", on_click=add)
