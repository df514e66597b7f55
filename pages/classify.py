"""Classify page: upload a batch with its mouse metadata, queue it for the GPU, watch it, see the results."""

from collections.abc import Iterator, Sequence

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from lsm_core.errors import FilesRefused, LsmError
from lsm_core.imaging.cells import MODALITIES
from lsm_core.imaging.images import FileChannels, file_channels
from lsm_core.imaging.readers.archives import RawFile
from lsm_core.lab import batches
from lsm_core.lab.batches import BatchMeta, submit_batch
from lsm_core.lab.jobs import queue_info
from lsm_core.ml.demo import demo_status
from lsm_core.reports.stats import AGE_UNITS, age_in_days
from lsm_core.reports.text import escape_markdown
from pages._common import the_lab, user
from pages._results_view import render_results
from pages._shared import file_errors, model_options, model_picker, show_flash

st.title("Classify")
lab = the_lab()


def show_demo_training(waiting: bool) -> None:
    """While `serve` trains the synthetic demo models in the background: how far it is. Redrawn every 5 s; the
    page reruns when a model becomes usable, the training starts or ends, or (``waiting``: no model yet) a
    model is registered some other way."""
    first = demo_status(lab.settings.model_dir)
    if first is not None and not first.running:
        st.error(
            f"Training the synthetic demo models {first.state}: "
            f"{escape_markdown(first.error or 'no reason was recorded')}. "
            "`python -m lsm_core demo` (or the next start of the app) tries again."
        )
        return
    if first is None and not waiting:
        return

    @st.fragment(run_every=5.0)
    def progress() -> None:
        now = demo_status(lab.settings.model_dir)
        changed = (now is None) != (first is None) or (
            now is not None and first is not None and (now.done != first.done or not now.running)
        )
        if changed or (waiting and model_options()):
            st.rerun()
        if now is None:
            st.error(
                "No classifier is registered. Start the app with `python -m lsm_core serve`, which trains the "
                "synthetic demo models, or import or train a model on the Models page. This page updates "
                "itself when one is registered."
            )
            return
        ready = f" {', '.join(now.done)} can be used already." if now.done else ""
        st.info(
            f"The synthetic demo models are being trained on this machine (started "
            f"{now.started.astimezone():%H:%M}; {now.model}: {now.step}, epoch {now.epoch} of {now.epochs})."
            f"{ready} This page updates itself; they are for trying the app and say nothing about real cells.",
            icon=":material/model_training:",
        )

    progress()


options = model_options()
every = model_options(include_failed=True)
show_demo_training(waiting=not every)
if len(every) > len(options) and st.toggle(
    f"Also offer the {len(every) - len(options)} model(s) that failed their quality check",
    help="A model whose accuracy on its validation set was not clearly above chance (see its card on the "
    "Models page). Its results are not trustworthy.",
):
    options = every

if not options:
    if every:
        st.error(
            "Every registered model failed its quality check; turn on the switch above to use one anyway, "
            "or train a better one on the Models page."
        )
    st.stop()


def uploads(files) -> Iterator[RawFile]:
    """The uploaded files one at a time (the library opens ZIPs member by member): never all at once in memory."""
    for f in files:
        yield RawFile(f.name, f.getvalue())


# the uploader's key changes after every submitted batch, so it is empty again: files already sent are never
# sent a second time with the next ones
st.session_state.setdefault("uploader_nonce", 0)
uploader_key = f"files_{st.session_state['uploader_nonce']}"

# outside the form, so that the channels of the first file can be listed as soon as it is chosen
files = st.file_uploader(
    "Images: PNG, JPEG, TIFF (8/16-bit, multi-page), OME-TIFF, ImageJ TIFF, Zeiss CZI, Nikon ND2, Leica LIF, "
    "Olympus OIB, a zipped OME-Zarr, or ZIP archives of images",
    accept_multiple_files=True,
    key=uploader_key,
)


# how the Imaging choice reads on the page (what each looks for: lsm_core.imaging.cells.MODALITIES, in its help)
IMAGING = {"auto": "DIC or brightfield", "dic": "DIC", "brightfield": "Brightfield", "phase": "Phase contrast"}


def first_file_channels(files) -> FileChannels | None:
    """The channels of the first chosen file (its headers; remembered per upload, so a rerun reads nothing)."""
    if not files:
        return None
    first = files[0]
    seen = st.session_state.setdefault("upload_channels", {})
    if first.file_id not in seen:
        seen.clear()
        seen[first.file_id] = file_channels(RawFile(first.name, first.getvalue()), lab.limits)
    return seen[first.file_id]


def channel_label(found: FileChannels, choice: int | None) -> str:
    if choice is None:
        if found.automatic is None:
            return "choose one: none is named as transmitted light"
        return f"automatic: {found.automatic}: {found.automatic_name or '(unnamed)'}"
    return f"{choice}: {found.names[choice] or '(unnamed)'}"


def chosen_channel(found: FileChannels, choice: int) -> str:
    """What the batch asks for: the channel's name (files of a batch may order their channels differently),
    its index when it is unnamed or its name is not unique."""
    name = found.names[choice]
    return name if name and name not in found.repeated and not name.isdigit() else str(choice)


# Every per-batch field starts at its default for each batch: their keys change with the uploader's, after every
# submitted batch. Only the mouse's own details go on to the next batch, and only when asked (KEEP_MOUSE).
MOUSE_FIELDS = ("mouse_id", "age", "age_unit", "sex", "strain", "imaging_date")


def field_key(name: str, nonce: int | None = None) -> str:
    return f"{name}_{st.session_state['uploader_nonce'] if nonce is None else nonce}"


def next_batch_form() -> None:
    """Start the form afresh for the next batch (called once a batch is submitted), carrying the mouse's
    details over when "Keep this mouse's details" is on."""
    old = st.session_state["uploader_nonce"]
    if st.session_state.get("keep_mouse"):
        for name in MOUSE_FIELDS:
            if field_key(name, old) in st.session_state:
                st.session_state[field_key(name, old + 1)] = st.session_state[field_key(name, old)]
    st.session_state["uploader_nonce"] = old + 1


found_channels = first_file_channels(files)
with st.form("batch", clear_on_submit=False):
    c: Sequence[DeltaGenerator] = st.columns(2)  # rows of 2, 4, 3 and 4 columns
    name = c[0].text_input("Batch name", placeholder="e.g. M17 LT-HSC 2026-11-20", key=field_key("name"))
    with c[1]:
        model_id = model_picker("Classifier", options, "classifier_id", help="Demo models are marked (synthetic demo).")
    c = st.columns(4)
    mouse_id = c[0].text_input("Mouse id", key=field_key("mouse_id"))
    age_text = c[1].text_input("Age", placeholder="e.g. 10", key=field_key("age"))
    age_unit = c[2].selectbox("Age unit", list(AGE_UNITS), key=field_key("age_unit"))
    sex = c[3].selectbox("Sex", ["", "F", "M"], format_func=lambda v: v or "not given", key=field_key("sex"))
    c = st.columns(3)
    strain = c[0].text_input("Strain or reporter", placeholder="e.g. C57BL/6, Evi1-GFP", key=field_key("strain"))
    gate = c[1].text_input("Sorting gate", placeholder="e.g. LSK CD150+CD48-", key=field_key("gate"))
    imaging_date = c[2].date_input("Imaging date", value=None, format="YYYY-MM-DD", key=field_key("imaging_date"))
    notes = st.text_area("Notes", height=80, key=field_key("notes"))
    c = st.columns(4)
    pixel_text = c[0].text_input(
        "Pixel size (µm/px)",
        placeholder="from the files, else the model's",
        help="Your microscope's calibration. Left empty: what each file states (OME-TIFF, CZI, ND2, ImageJ, "
        "TIFF resolution), else the lab's LSM_PIXEL_SIZE_UM when it sets one, else the model's default, and the "
        "results say which was used.",
        key=field_key("pixel_size"),
    )
    if found_channels is not None:  # listed from the first file: the choice applies to every file of the batch
        channels = found_channels
        choices: list[int | None] = [None, *range(len(channels.names))]
        picked = c[1].selectbox(
            "Channel to classify",
            choices,
            format_func=lambda i: channel_label(channels, i),
            key=field_key("channel_pick"),
            help=f"The channels of {escape_markdown(found_channels.file)}; the one chosen is classified in every "
            "file of the batch, the others are measured in each cell as reporter signal. Automatic: the channel "
            "named DIC, TD, Trans, BF, Bright or Phase.",
        )
        channel_text = "" if picked is None else chosen_channel(found_channels, picked)
        if found_channels.more:  # a file of many channels: the first few dozen are listed, the others typed
            typed = c[1].text_input(
                f"… and {found_channels.more:,} more channels (type a channel's number)",
                placeholder="a number from 0",
                help=f"{escape_markdown(found_channels.file)} has {found_channels.count:,} channels; the first "
                f"{len(found_channels.names)} are listed above. A number (from 0) or a name typed here is classified "
                "instead of the one chosen above.",
                key=field_key("channel_more"),
            )
            if typed.strip():
                channel_text = typed.strip()
    else:
        channel_text = c[1].text_input(
            "Channel to classify",
            placeholder="the transmitted-light one",
            help="For files with several channels: a channel's name or number (from 0). Left empty: the channel "
            "named DIC, TD, Trans, BF, Bright or Phase.",
            key=field_key("channel"),
        )
    z_text = c[2].text_input(
        "z plane",
        placeholder="the best-focused",
        help="For z-stacks: the plane to classify, from 0.",
        key=field_key("z"),
    )
    modality = c[3].selectbox(
        "Imaging",
        list(MODALITIES),
        format_func=IMAGING.__getitem__,
        help="How the cells were imaged. "
        + " ".join(f"{IMAGING[m]}: {what}." for m, what in MODALITIES.items() if m != "auto"),
        key=field_key("modality"),
    )
    st.checkbox(
        "Keep this mouse's details for the next batch",
        key="keep_mouse",
        help="Mouse id, age, sex, strain and imaging date stay filled in after this batch is sent (for several "
        "batches of one mouse). Everything else starts empty for each batch.",
    )
    submitted = st.form_submit_button("Classify", type="primary")


def number_or_none(text: str, what: str, kind: type = float):
    """The number typed in a text box, or None when it is empty; LsmError names the box otherwise."""
    text = (text or "").strip().replace(",", ".")
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise LsmError(f"{what} {text!r} is not a number") from None


def do_submit(batch_name: str, add_to: int | None = None) -> bool:
    """Submit the files in the uploader as a new batch (or add them to batch ``add_to``); False when refused."""
    files_now = st.session_state.get(uploader_key) or []
    if not files_now:
        st.error("Choose at least one file to upload.")
        return False
    try:
        raws = uploads(files_now)
        if add_to is not None:
            result = batches.add_files(lab, add_to, raws, user())
        else:
            meta = BatchMeta(
                mouse_id=mouse_id or None,
                age_days=age_in_days(age_text, age_unit),
                sex=sex or None,
                strain=strain or None,
                gate=gate or None,
                imaging_date=imaging_date.isoformat() if imaging_date else None,
                notes=notes or None,
                pixel_size_um=number_or_none(pixel_text, "pixel size"),
                channel=channel_text or None,
                z=number_or_none(z_text, "z plane", int),
                modality=modality,
            )
            if model_id is None:
                raise LsmError("choose a classifier")
            result = submit_batch(lab, raws, model_id, batch_name, owner=user(), meta=meta)
    except FilesRefused as exc:
        st.error(escape_markdown(exc))
        file_errors(exc.files)
        return False
    except LsmError as exc:
        st.error(escape_markdown(exc))
        return False
    st.session_state["current"] = {
        "batch": result.batch_id,
        "job": result.job_id,
        "errors": result.errors,
        "skipped": result.skipped,
        "added": add_to is not None,
        "images": result.images,
    }
    st.session_state.pop("pending_name", None)
    next_batch_form()
    return True


if submitted:
    try:
        age_in_days(age_text, age_unit)  # a wrong age is said before anything is stored
        if not files:
            raise LsmError("Choose at least one file to upload.")
        if not name.strip():
            raise LsmError("Give the batch a name.")
    except LsmError as exc:
        st.error(escape_markdown(exc))
    else:
        existing = batches.find_by_name(lab, user(), name)
        if existing is not None:
            st.session_state["pending_name"] = {"name": name.strip(), "existing": existing}
        else:
            if do_submit(name):
                st.rerun()  # the uploader is empty again

pending = st.session_state.get("pending_name")
if pending:
    st.warning(
        f"You already have a batch called “{escape_markdown(pending['name'])}” (#{pending['existing']}). "
        "Rename this one, or add these files to it? Files already in it are skipped."
    )
    choice = st.radio(
        "What should happen", ["Rename this batch", "Add the files to the existing batch"], key="dup_choice"
    )
    if choice == "Rename this batch":
        new_name = st.text_input("New name", value=f"{pending['name']} (2)", key="dup_name")
        if st.button("Classify under the new name"):
            if batches.find_by_name(lab, user(), new_name) is not None:
                st.error(f"“{escape_markdown(new_name)}” is taken too; choose another name.")
            elif do_submit(new_name):
                st.rerun()
    elif st.button("Add and classify") and do_submit(pending["name"], add_to=pending["existing"]):
        st.rerun()

show_flash()
current = st.session_state.get("current")
if current:
    if current.get("added"):
        st.success(f"{current['images']} new image(s) added to batch #{current['batch']}.")
    if current.get("skipped"):
        st.info(
            f"{len(current['skipped'])} file(s) skipped: their exact bytes are in this batch already, and a file "
            "is never counted twice."
        )
        file_errors(current["skipped"], mark="○")
    info = queue_info(lab, current["job"])
    if current["errors"] and info.status != "done":  # once done, the results below list them
        st.error(f"{len(current['errors'])} file(s) could not be read; the rest of the batch goes on.")
        file_errors(current["errors"])
    if info.status in ("queued", "running"):
        job_id = current["job"]

        @st.fragment(run_every=1.0)
        def progress() -> None:
            now = queue_info(lab, job_id)
            if now.status not in ("queued", "running"):
                st.rerun()
            label = f"{now.done:,} of {now.total:,} images"
            if now.status == "queued":
                label += f" · waiting in the queue, position {now.position}" if now.position else " · waiting"
            if now.eta_s is not None:
                label += f" · about {max(1, round(now.eta_s)):,} s left"
            st.progress(now.done / now.total if now.total else 0.0, text=label)
            st.caption("You can leave this page: the batch goes on and is kept in the History.")

        progress()
    elif info.status == "done":
        st.success("Done.")
        render_results(current["batch"], key="classify")
    else:
        st.error(f"The batch {info.status}" + (f": {escape_markdown(info.error)}" if info.error else "."))
