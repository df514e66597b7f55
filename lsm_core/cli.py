"""The ``python -m lsm_core`` command line. Subcommands are one function each, found through one dict."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

from lsm_core.errors import LsmError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_synth(args: argparse.Namespace) -> int:
    from lsm_core.imaging.synthetic import write_dataset

    if args.n < 0 or args.fields < 0:
        raise LsmError("--n and --fields must be 0 or more")
    counts = write_dataset(args.task, args.n, args.out, fields=args.fields, seed=args.seed)
    _log(f"wrote synthetic {args.task} data under {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lsm_core.imaging.images import read_inputs, reporter_names
    from lsm_core.imaging.readers.base import ReadOptions
    from lsm_core.ml.classify import Summary, classify_records, find_params_for, result_columns
    from lsm_core.ml.predict import make_predictor
    from lsm_core.reports.export import signal_columns, write_csv, write_table
    from lsm_core.reports.shift import assess

    settings = _settings()
    package = _store().resolve(args.model)
    device = args.device or settings.device
    predictor = make_predictor(package, device, settings.precision, args.batch_size, settings.runtime)
    params = find_params_for(predictor, args.pixel_size, settings.pixel_size_um, args.modality)
    runtime = " (ONNX Runtime)" if predictor.runtime == "onnx" else " (bf16)" if predictor.bf16 else ""
    _log(f"model {package.manifest.label} on {predictor.device}{runtime}")
    summary = Summary()
    n_classes = len(predictor.classes)
    options = ReadOptions(args.channel, args.z)
    channels = reporter_names(args.inputs, settings.limits, options)  # from the headers: the columns come first
    columns = result_columns(predictor.classes) + signal_columns(channels)
    progress = tqdm(read_inputs(args.inputs, settings.limits, options), unit=" image", file=sys.stderr, disable=None)
    rows: Iterator[list] = (
        row.values(n_classes, channels) for row in classify_records(progress, predictor, params, summary)
    )
    if args.out:
        write_table(args.out, columns, rows)
    else:
        write_csv(sys.stdout, columns, rows)
    progress.close()
    dropped = ", ".join(f"{v} {k}" for k, v in summary.dropped.items() if v)
    _log(
        f"{summary.cells} cells classified from {summary.images} images; {summary.failed} failed; "
        f"{summary.no_cells} without cells"
        + (f"; dropped {dropped}" if dropped else "")
        + (f"; written to {args.out}" if args.out else "")
    )
    doubt = summary.calibration_doubt()
    if doubt:
        _log(f"warning: {doubt} Run again with --pixel-size (micrometres per pixel) at your microscope's calibration.")
    if summary.cells:
        shift = assess(summary.distances, package.manifest.training)
        _log(("warning: " if shift.warns else "") + f"shift from the training data: {shift.level}. {shift.note}")
    if summary.cells == 0:
        _log("nothing could be classified")
        return 1
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    packages = _store().packages()
    if not packages:
        _log("no models registered; `python -m lsm_core demo` registers the synthetic demo models")
        return 0
    print("name\tversion\ttask\tarchitecture\tclasses\tdemo\tsha256")
    for p in packages:
        m = p.manifest
        demo = "synthetic demo" if m.demo else ""
        print(
            f"{m.name}\t{m.version}\t{m.task}\t{m.architecture}\t{','.join(m.classes)}\t{demo}\t{m.weights_sha256[:12]}"
        )
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lsm_core.lab.registry import import_model, import_zoo_package

    if args.manifest is None:
        path = Path(args.weights)
        if path.suffix.lower() != ".zip":
            raise LsmError("give the weights' --manifest, or a BioImage Model Zoo package (.zip)")
        if not path.is_file():
            raise LsmError(f"{path}: no such file")
        row = import_zoo_package(_lab(), path.read_bytes(), _settings().user, args.name, path.name)
        _log(f"registered {row.label} ({row.task}) from the bioimage.io package {path.name}")
        return 0
    row = import_model(_lab(), args.weights, args.manifest, _settings().user)
    _log(f"registered {row.label} ({row.task}) at {row.path} in the model store")
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    from db import queries
    from lsm_core.reports.zoo import export_for_zoo

    if args.format != "bioimageio":
        raise LsmError(f"export format {args.format!r}: only bioimageio is known")
    lab = _lab()
    with lab() as s:
        row = queries.model_by_name(s, args.model)
        if row is None:
            raise LsmError(f"no registered model {args.model!r} (NAME or NAME:VERSION; `models list` lists them)")
        model_id = row.id
    authors = args.author or [_settings().user]
    name, data = export_for_zoo(lab, model_id, authors, args.license, progress=_log)
    out = args.out or name
    with open(out, "wb") as fh:
        fh.write(data)
    _log(f"wrote {out} ({len(data) / 1e6:.1f} MB): a bioimage.io model package, validated by bioimageio.spec")
    return 0


def _require_admin(doing: str):
    """The lab (upgraded), after checking that the user (LSM_USER / login name) administers."""
    from lsm_core.lab import accounts

    lab = _lab()
    with lab() as s:
        accounts.require_admin(lab, s, accounts.current_user(lab), doing)
    return lab


def cmd_demo(args: argparse.Namespace) -> int:
    import signal

    from lsm_core.lab.registry import sync_models
    from lsm_core.ml.demo import train_missing_demo_models

    def terminate(*_) -> None:  # SIGTERM (serve stopping) unwinds like Ctrl-C: the status record is removed
        raise KeyboardInterrupt

    from lsm_core.ml.demo import demo_recipe

    signal.signal(signal.SIGTERM, terminate)
    lab = _lab()
    # each model is registered in the database as soon as it is trained: the app offers it at once
    packages = train_missing_demo_models(
        lab.store, log=_log, on_model=lambda package: sync_models(lab), recipe=demo_recipe(lab.settings.demo_recipe)
    )
    sync_models(lab)
    for package in packages:
        _log(f"{package.manifest.label}: ready")
    return 0


def _settings():
    from lsm_core.lab import settings

    return settings.current()


def _store():
    """The model store of the settings (no database needed)."""
    from lsm_core.ml.models import ModelStore

    root = _settings().model_dir
    root.mkdir(parents=True, exist_ok=True)
    return ModelStore(root)


def _lab(sync: bool = True):
    """The lab of the settings: its database upgraded to this code's schema and, with ``sync``, the store's
    models registered (which reads the packages with torch: the commands that only read and label the
    history leave it to the next one that runs a model)."""
    from lsm_core.lab.open_lab import open_lab

    return open_lab(_settings(), sync=sync)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from db.session import current_revision

    lab = _lab()
    url = lab.settings.database_url
    _log(f"database {url.split('@')[-1] if '@' in url else url} is at schema revision {current_revision(lab.engine)}")
    return 0


def cmd_blobs_gc(args: argparse.Namespace) -> int:
    from lsm_core.lab.gc import collect_garbage

    if not args.grace_hours >= 0:
        raise LsmError("--grace-hours must be 0 or more")
    lab = _require_admin("remove unused stored files")
    report = collect_garbage(lab, dry_run=args.dry_run, grace_s=args.grace_hours * 3600)
    print(f"{lab.blobs.root}: {report.summary()}" + (" (dry run: nothing was removed)" if args.dry_run else ""))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from lsm_core.lab.worker import ALL_KINDS, Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else ALL_KINDS
    if args.prep_workers is not None and args.prep_workers < 0:
        raise LsmError("--prep-workers must be 0 or more")
    worker = Worker(
        _lab(),
        device=args.device,
        kinds=kinds,
        lease_s=args.lease,
        poll_s=args.poll,
        batch_size=args.batch_size,
        prep_workers=args.prep_workers,
    )
    worker.install_signal_handlers()
    _log(
        f"worker {worker.id} on {worker.device}, job kinds: {', '.join(worker.kinds)}, "
        f"{worker.prep.workers} preparation process(es)"
    )
    n = worker.run(drain=args.drain)
    _log(f"worker {worker.id} stopped after {n} jobs")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lsm_core.lab.serve import serve

    return serve(port=args.port, log=_log, address=args.address)


def _as_uploaded(inputs: list[str], limits):
    """The files of ``inputs`` named as the web app names an upload: a file by its name, a file found in a
    folder by its path from the folder's name (``run1/well A/cell.tif``), never by where it lies on this
    machine (a full path made ``label BATCH cell.tif:12`` find no cell, and showed the submitter's folders)."""
    import dataclasses
    import os

    from lsm_core.imaging.readers.archives import iter_files

    for item in inputs:
        parent = os.path.dirname(os.path.abspath(str(item).rstrip("/\\")))
        for raw in iter_files([item], limits):
            source = os.path.abspath(raw.source) if raw.source.startswith(str(item)) else raw.source
            named = os.path.relpath(source, parent) if source.startswith(parent + os.sep) else raw.source
            yield dataclasses.replace(raw, source=named.replace(os.sep, "/"))


def cmd_submit(args: argparse.Namespace) -> int:
    from db.queries import model_by_name
    from lsm_core.lab.accounts import current_user
    from lsm_core.lab.batches import BatchMeta, submit_batch

    lab = _lab()
    me = current_user(lab)  # the command line's person: LSM_USER, else the login name
    with lab() as s:
        model = model_by_name(s, args.model)
        if model is None:
            raise LsmError(f"no model named {args.model!r}; see `python -m lsm_core models list`")
        model_id = model.id
    meta = BatchMeta.of(args, pixel_size_um=args.pixel_size)
    result = submit_batch(
        lab,
        _as_uploaded(args.inputs, lab.limits),
        model_id,
        args.batch,
        args.owner or me,  # --owner (administrators): whose batch it is; else the person running the command
        meta=meta,
        priority=args.priority,
        actor=me,  # the audit trail names who ran the command
    )
    for file, message in result.errors:
        _log(f"{file}: {message}")
    for file, why in result.skipped:
        _log(f"{file}: skipped, {why}")
    print(f"batch {result.batch_id} job {result.job_id}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import json

    from db.queries import jobs_list

    with _lab(sync=False)() as s:
        rows = [
            {
                "id": j.id,
                "batch": j.batch_id,
                "owner": j.owner,
                "kind": j.kind,
                "status": j.status,
                "done": j.progress_done,
                "total": j.progress_total,
                "attempts": j.attempts,
                "error": j.error,
            }
            for j in jobs_list(s, limit=args.limit)
        ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("id\tbatch\towner\tkind\tstatus\tdone/total\tattempts\terror")
    for r in rows:
        print(
            f"{r['id']}\t{r['batch']}\t{r['owner']}\t{r['kind']}\t{r['status']}\t{r['done']}/{r['total']}\t"
            f"{r['attempts']}\t{r['error'] or ''}"
        )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from lsm_core.lab.accounts import current_user
    from lsm_core.lab.jobs import cancel

    lab = _lab(sync=False)
    status = cancel(lab, args.job_id, current_user(lab))
    print(f"job {args.job_id} {'cancelled' if status == 'cancelled' else 'stops at its next step'}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from lsm_core.lab import cell_labels
    from lsm_core.lab.accounts import current_user

    lab = _lab(sync=False)
    items = cell_labels.queue(lab, args.batch_ids, current_user(lab), args.order, args.unlabelled, args.limit)
    from sqlalchemy import select

    from db.schema import Image

    with lab() as s:
        files = dict(s.execute(select(Image.id, Image.file).where(Image.batch_id.in_(args.batch_ids))).all())
    print("batch\tfile\tcell\tpredicted\tscore\tmargin\tmine\tconsensus")
    for q in items:
        mine = q.mine.text if q.mine else ""
        agreed = "" if q.consensus is None else q.consensus.text + (" (disputed)" if q.consensus.disputed else "")
        print(
            f"{q.batch_id}\t{files.get(q.image_id, '')}\t{q.idx}\t{q.predicted}\t{q.score:.3f}\t{q.margin:.3f}\t"
            f"{mine}\t{agreed}"
        )
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from lsm_core.lab import cell_labels
    from lsm_core.lab.accounts import current_user

    if args.table is not None:
        return _label_from_table(args)
    if args.cell is None or args.label is None:
        raise LsmError("give the cell and its label (FILE:CELL LABEL), or a table of labels (--from FILE.csv)")
    lab = _lab(sync=False)
    file, _, idx = args.cell.rpartition(":")
    if not file or not idx.isdigit():
        raise LsmError(f"name the cell as FILE:CELL (the export's file and cell columns), not {args.cell!r}")
    cell_id = cell_labels.find_cell(lab, args.batch_id, file, int(idx), args.page)
    label, excluded = cell_labels.parse_label(args.label)
    new = cell_labels.set_label(lab, cell_id, current_user(lab), label, excluded)
    print(f"{args.cell}: " + ("unchanged" if new is None else new.text if not new.withdrawn else "label taken back"))
    return 0


def _label_from_table(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lsm_core.lab import cell_labels
    from lsm_core.lab.accounts import current_user

    if args.cell is not None or args.label is not None:
        raise LsmError("give either a cell and its label or --from FILE.csv, not both")
    path = Path(args.table)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet program's CSV may start with a BOM
    except FileNotFoundError:
        raise LsmError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LsmError(f"{path}: cannot be read as a UTF-8 CSV table ({exc})") from None
    try:
        rows = cell_labels.read_label_table(text)
        lab = _lab(sync=False)
        done = cell_labels.import_labels(lab, args.batch_id, current_user(lab), rows, source=path.name)
    except LsmError as exc:
        raise LsmError(f"{path}: {exc}") from None
    left = [
        f"{n} {what}"
        for n, what in (
            (done.unchanged, "unchanged"),
            (done.empty, "without a label"),
            (done.other_batches, "of other batches"),
        )
        if n
    ]
    print(
        f"{path}: {done.labelled} cell(s) labelled, {done.taken_back} label(s) taken back"
        + (f"; rows left alone: {', '.join(left)}" if left else "")
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lsm_core.reports.export import batch_rows, write_table

    with _lab(sync=False)() as s:
        columns, rows = batch_rows(s, args.batch_ids)
        n = write_table(args.out, columns, rows)
    _log(f"wrote {n} rows to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lsm_core.reports.report import workbook

    if not str(args.out).lower().endswith(".xlsx"):
        raise LsmError(f"--out {args.out}: the report is a workbook, name it FILE.xlsx")
    if not 0.0 <= args.threshold <= 1.0:
        raise LsmError(f"--threshold {args.threshold:g}: a score threshold is between 0 and 1")
    with _lab(sync=False)() as s:
        data = workbook(s, args.batch_id, args.threshold)
    with open(args.out, "wb") as fh:
        fh.write(data)
    _log(f"wrote batch {args.batch_id}'s workbook (score threshold {args.threshold:g}) to {args.out}")
    return 0


def _print_metrics(m: dict) -> None:
    if m.get("evaluated_on"):
        print(f"on the {m['evaluated_on']}")
    print(
        f"accuracy (consistency): {m['accuracy']:.3f}   macro F1: {m['macro_f1']:.3f}   "
        f"macro AUC: {m['macro_auc'] if m['macro_auc'] is None else round(m['macro_auc'], 3)}   "
        f"ECE: {m['ece']:.3f}   n={m['n']}"
    )
    print("class\tprecision\trecall\tF1\tAUC\tsupport")
    for c, v in m["per_class"].items():
        auc = "" if v["auc"] is None else f"{v['auc']:.3f}"
        print(f"{c}\t{v['precision']:.3f}\t{v['recall']:.3f}\t{v['f1']:.3f}\t{auc}\t{v['support']}")
    print("confusion matrix (rows: true, columns: predicted):")
    for c, row in zip(m["classes"], m["confusion_matrix"]):
        print(f"  {c}\t" + "\t".join(str(v) for v in row))


def cmd_train(args: argparse.Namespace) -> int:
    from lsm_core.ml.datasets import LabelledData, from_paths
    from lsm_core.ml.models import check_name
    from lsm_core.ml.predict import choose_device
    from lsm_core.ml.train import TrainConfig, train_and_register

    check_name(args.register)
    if bool(args.batches) != bool(args.gate):
        raise LsmError(
            "--batches needs --gate RULE (the reporter gate that labels their cells)"
            if args.batches
            else "--gate needs --batches ID [ID ...] (the batches whose cells it labels)"
        )
    if not args.data and not args.gate and not args.reviewed:
        raise LsmError(
            "give training data: folders or ZIPs of class folders, --batches ID ... --gate RULE and/or "
            "--reviewed ID ..."
        )
    gate = None
    if args.gate:
        from lsm_core.lab.gating import parse_gate

        gate = parse_gate(args.gate, args.task)  # refused before the lab is opened or anything is read
    lab = _require_admin("train models")
    config = TrainConfig(
        architecture=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_lr_factor=0.01 if args.imagenet else 1.0,
        seed=args.seed,
        keep_size=args.keep_size,
    )
    params = config.find_params(args.input_size)  # the same 12.8 um square, sampled at --input-size pixels
    parts = [from_paths(args.data, args.task, params)] if args.data else []
    if gate is not None:
        from lsm_core.lab.training_data import from_gate

        with lab() as s:
            gated = from_gate(s, lab, args.batches, gate, args.task, params)
        (summary,) = gated.provenance
        counts = summary["counts"]
        _log(
            f"gate {gate.text} on batches {', '.join(map(str, summary['batches']))}: "
            + ", ".join(f"{c} {n}" for c, n in counts["labelled"].items())
            + f"; left out: {counts['between']} between the thresholds, {counts['no_value']} with no "
            f"{gate.channel} value"
            + "".join(f"; Otsu's threshold of batch {b}: {t:g}" for b, t in summary["thresholds"].items())
        )
        parts.append(gated)
    if args.reviewed:
        from lsm_core.lab.training_data import from_reviews

        with lab() as s:
            reviewed = from_reviews(s, lab, args.reviewed, args.task, params)
        (summary,) = reviewed.provenance
        _log(
            f"reviewed cells of batches {', '.join(map(str, summary['batches']))}: "
            + ", ".join(f"{c} {n}" for c, n in summary["cells"].items())
            + f" (labelled by {', '.join(summary['labelled_by'])}; label set sha256 {summary['sha256'][:12]})"
        )
        parts.append(reviewed)
    data = LabelledData.concat(parts)
    for file, message in data.errors[:20]:
        _log(f"{file}: {message}")
    if len(data.errors) > 20:
        _log(f"... and {len(data.errors) - 20} more unusable files")
    test = from_paths(args.test, args.task, params) if args.test else None
    _log(
        f"training data: {len(data.labels):,} cells from {len(data.sources):,} images: "
        + ", ".join(f"{c} {n}" for c, n in data.class_counts.items())
    )
    device = choose_device(args.device or lab.settings.device)

    def progress(epoch, loss, vloss, vacc):
        _log(
            f"epoch {epoch}/{config.epochs}: training loss {loss:.4f}, validation loss {vloss:.4f}, "
            f"validation accuracy {vacc:.3f}"
        )

    package = train_and_register(
        data,
        args.task,
        config,
        args.register,
        lab.store,
        test=test,
        progress=progress,
        device=device,
        imagenet=args.imagenet,
        patience=args.patience,
        input_size=args.input_size,
    )
    try:
        from lsm_core.lab.registry import sync_models

        sync_models(lab)
    except Exception as exc:  # the store is the source of truth; the database catches up on its next start
        _log(f"note: the database was not updated now ({exc})")
    m = package.manifest
    _log(f"registered {m.label}: temperature {m.temperature:.3f}")
    _print_metrics(m.metrics)
    if m.metrics.get("test"):
        _print_metrics(m.metrics["test"])
    from lsm_core.ml.models import model_quality

    passed, reasons, warnings = model_quality(m.metrics)
    for line in reasons + warnings:
        _log(("FAILED QUALITY CHECK: " if line in reasons else "warning: ") + line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from lsm_core.ml.classify import find_params_for
    from lsm_core.ml.datasets import from_paths
    from lsm_core.ml.predict import TorchPredictor
    from lsm_core.ml.train import evaluate_predictor

    settings = _settings()
    package = _store().resolve(args.model)
    predictor = TorchPredictor(package, device=args.device or settings.device, precision=settings.precision)
    data = from_paths(args.data, package.manifest.task, find_params_for(predictor, None, settings.pixel_size_um))
    metrics = evaluate_predictor(predictor, data)
    metrics["model"] = package.manifest.label
    metrics["evaluated_on"] = f"test set {', '.join(map(str, args.data))}: {metrics['n']} cells"
    metrics["unusable_files"] = [{"file": f, "error": e} for f, e in data.errors]
    if args.json:
        print(json.dumps(metrics))
    else:
        for file, message in data.errors:
            _log(f"{file}: {message}")
        _print_metrics(metrics)
    if args.record:
        from db import queries
        from lsm_core.lab import accounts
        from lsm_core.lab.registry import record_error_profile

        lab = _lab()
        m = package.manifest
        with lab() as s:
            row = queries.model_by_name(s, f"{m.name}:{m.version}")
        if row is None:
            raise LsmError(f"{m.label} is not registered in the history: nothing to record the profile on")
        record_error_profile(lab, row.id, metrics, accounts.current_user(lab))
        _log(f"recorded as the error profile of {m.name} v{m.version}: its batches' compositions are corrected with it")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lsm_core.reports import compare
    from lsm_core.reports.stats import parse_bins

    bins = parse_bins(args.bins) if args.by == "age" else None
    with _lab()() as s:
        mixed = args.allow_mixed_models
        c = compare.build(
            s,
            args.batch_ids,
            by=args.by,
            bins=bins,
            threshold=args.threshold,
            allow_mixed_models=mixed,
            fractions=args.fractions,
        )
        data = compare.workbook(s, c)
        if args.methods:
            from lsm_core.reports.methods import methods_text

            with open(args.methods, "w", encoding="utf-8") as fh:
                fh.write(methods_text(s, c))
    with open(args.out, "wb") as fh:
        fh.write(data)
    for row in c.tests.itertuples(index=False):  # two classes: one test, no correction (Comparison.corrected)
        holm = f"\tHolm p {row[6]:.4g}" if c.corrected else ""
        print(f"{row[0]}\t{row[1]}\tstatistic {row[4]:.4g}\tp {row[5]:.4g}{holm}\t{row[8]} {row[7]:.3g}")
    for o in c.odds.itertuples(index=False):  # the model of cells within mice
        said = f"odds ratio {o.odds_ratio:.3g} (95% CI {o.ci95_low:.3g}-{o.ci95_high:.3g})\tp {o.p_value:.4g}"
        print(f"{o[0]}\t{o.term}\t{said if o.note == '' else o.note}")
    for warning in c.warnings:
        _log(warning)
    grouped = c.table.dropna(subset=["group"])
    _log(
        f"{len(grouped)} mice in {c.groups['group'].nunique()} groups (from {int(grouped['n_batches'].sum())} "
        f"batches: a mouse's batches are pooled); wrote {args.out}"
    )
    return 0


def cmd_saliency(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from lsm_core.imaging.images import read_inputs
    from lsm_core.ml.classify import ResultRow, Summary, classify_records, find_params_for, result_columns
    from lsm_core.ml.predict import TorchPredictor
    from lsm_core.ml.saliency import overlay, saliency_maps, scorecam_k
    from lsm_core.reports.export import write_csv

    settings = _settings()
    package = _store().resolve(args.model)
    predictor = TorchPredictor(package, device=args.device or settings.device, precision=settings.precision)
    net = package.load(predictor.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = predictor.classes
    columns = result_columns(classes)
    rows: list[ResultRow] = []
    crops: list[np.ndarray] = []
    targets: list[int] = []
    summary = Summary()
    params = find_params_for(predictor, args.pixel_size, settings.pixel_size_um)
    for row in classify_records(read_inputs(args.inputs, settings.limits), predictor, params, summary, keep_crops=True):
        rows.append(row)
        if row.cell is not None:
            # keep_crops=True: every cell row carries its crop and its predicted class
            assert row.crop is not None and row.predicted is not None
            crops.append(row.crop)
            targets.append(classes.index(row.predicted))
    maps = np.zeros((0, package.manifest.input_size, package.manifest.input_size), np.float32)
    if crops:
        if args.scorecam_channels is not None and args.scorecam_channels < 0:
            raise LsmError("--scorecam-channels must be 0 (every channel) or more")
        k = scorecam_k(settings.scorecam_channels if args.scorecam_channels is None else args.scorecam_channels)
        maps = saliency_maps(
            net,
            package.manifest.architecture,
            np.stack(crops),
            args.method,
            np.array(targets),
            device=predictor.device,
            scorecam_channels=k,
        )
    np.savez_compressed(out / "maps.npz", maps=maps)
    with open(out / "cells.csv", "w", newline="", encoding="utf-8") as fh:
        write_csv(fh, columns, (row.values(len(classes)) for row in rows))
    cells = [row for row in rows if row.cell is not None]
    for k, (row, crop) in enumerate(zip(cells, crops, strict=True)):  # one crop per cell row, in order
        stem = Path(row.file).name.rsplit(".", 1)[0]
        Image.fromarray(overlay(crop, maps[k])).save(
            out / f"{k + 1:05d}_{stem}_p{row.page}_c{row.cell}_{args.method}.png"
        )
    k = len(cells)
    _log(f"{k} cells: overlays, maps.npz ({maps.shape}) and cells.csv written to {out}")
    return 0 if k else 1


def _add_plane_options(p: argparse.ArgumentParser) -> None:
    """--channel and --z: which plane of a multi-channel file or a z-stack is classified; --modality: how its
    cells were imaged."""
    p.add_argument(
        "--channel",
        default=None,
        metavar="NAME|INDEX",
        help="the channel of multi-channel files to classify (default: the one named as transmitted light: "
        "DIC, TD, Trans, BF, Bright, Phase)",
    )
    p.add_argument(
        "--z",
        type=int,
        default=None,
        metavar="INDEX",
        help="the z plane of z-stacks, from 0 (default: the best-focused plane)",
    )
    from lsm_core.imaging.cells import MODALITIES

    p.add_argument(
        "--modality",
        choices=list(MODALITIES),
        default="auto",
        help="how the cells were imaged: "
        + "; ".join(f"{name}: {what}" for name, what in MODALITIES.items()).replace("%", "%%"),
    )


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    from lsm_core.classes import TASKS  # choices come from the registries that hold them

    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--n", type=int, required=True, help="number of single-cell crops in all")
    p.add_argument("--out", required=True)
    p.add_argument("--fields", type=int, default=0, help="number of 2048x2048 16-bit fields of view")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def _classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--model", required=True, help="a registered name (name or name:version) or a package folder")
    p.add_argument("--out", help="FILE.csv or FILE.xlsx (default: CSV on standard output)")
    p.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="UM_PER_PIXEL",
        help="the microscope's calibration (default: what the file states, else LSM_PIXEL_SIZE_UM, else the "
        "model's, 0.2 for the demo models)",
    )
    _add_plane_options(p)
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LSM_DEVICE or auto)")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_classify)


def _models_arguments(p: argparse.ArgumentParser) -> None:
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list the registered models")
    q.set_defaults(func=cmd_models_list)
    q = msub.add_parser(
        "import",
        help="register a state_dict (.pt, .pth, .safetensors) with a manifest.json, or a BioImage Model Zoo "
        "package (.zip: its test tensors must reproduce)",
    )
    q.add_argument("weights", metavar="WEIGHTS_OR_PACKAGE")
    q.add_argument("--manifest", default=None, help="the manifest.json of a state_dict (not for a .zip package)")
    q.add_argument("--name", default=None, help="a package's name here (default: the name it carries)")
    q.set_defaults(func=cmd_models_import)
    q = msub.add_parser(
        "export", help="write a model as a BioImage Model Zoo package (rdf.yaml, 3 weights formats, test tensors)"
    )
    q.add_argument("model", metavar="NAME[:VERSION]")
    q.add_argument("--format", default="bioimageio", choices=["bioimageio"])
    q.add_argument("--out", default=None, help="FILE.zip (default NAME-vN.bioimageio.zip)")
    q.add_argument("--author", action="append", help="an author of the model (repeat; default: LSM_USER)")
    q.add_argument("--license", default="CC-BY-4.0", help="SPDX licence id of the model (default CC-BY-4.0)")
    q.set_defaults(func=cmd_models_export)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_demo)


def _db_arguments(p: argparse.ArgumentParser) -> None:
    dsub = p.add_subparsers(dest="db_command", required=True)
    q = dsub.add_parser("upgrade", help="migrate the database (LSM_DATABASE_URL) to this code's schema")
    q.set_defaults(func=cmd_db_upgrade)


def _blobs_arguments(p: argparse.ArgumentParser) -> None:
    bsub = p.add_subparsers(dest="blobs_command", required=True)
    q = bsub.add_parser(
        "gc",
        help="remove stored files that no batch, saliency run or waiting job uses, and temporary files of "
        "interrupted uploads, once older than the grace period; prints the space freed",
    )
    q.add_argument("--dry-run", action="store_true", help="remove nothing; print what would be freed")
    q.add_argument(
        "--grace-hours",
        type=float,
        default=1.0,
        metavar="H",
        help="leave files stored less than H hours ago (uploads in progress); default 1",
    )
    q.set_defaults(func=cmd_blobs_gc)


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    from lsm_core.lab.jobs import JobKind

    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LSM_DEVICE or auto)")
    p.add_argument(
        "--kinds",
        default=None,
        help=f"comma-separated job kinds to take: {', '.join(k.value for k in JobKind)} (default: all)",
    )
    p.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    p.add_argument(
        "--prep-workers",
        type=int,
        default=None,
        metavar="N",
        help="processes that read images and find their cells (default: LSM_PREP_WORKERS, else the cores minus "
        "one as memory allows; 0: this process does it)",
    )
    p.add_argument("--lease", type=float, default=60.0, help="seconds a claimed job is held between heartbeats")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at an empty queue")
    p.add_argument("--batch-size", type=int, default=None, help="crops per forward pass (default 256)")
    p.set_defaults(func=cmd_worker)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--address",
        default=None,
        help="where the app listens (default LSM_ADDRESS, else 127.0.0.1: this machine only; 0.0.0.0: every "
        "interface, for the lab's network: set LSM_ADMINS or sign-in first)",
    )
    p.set_defaults(func=cmd_serve)


def _submit_arguments(p: argparse.ArgumentParser) -> None:
    from lsm_core.lab.batches import SEXES

    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--model", required=True, help="a registered model name (or name:version)")
    p.add_argument("--batch", required=True, help="the batch's name")
    p.add_argument("--owner", default=None, help="who submits (default: LSM_USER or the login name)")
    p.add_argument("--mouse-id")
    p.add_argument("--age-days", type=float)
    p.add_argument("--sex", choices=sorted(SEXES))
    p.add_argument("--strain")
    p.add_argument("--gate")
    p.add_argument("--imaging-date", help="YYYY-MM-DD")
    p.add_argument("--notes")
    p.add_argument("--pixel-size", type=float, metavar="UM_PER_PIXEL")
    _add_plane_options(p)
    p.add_argument("--priority", type=int, default=0)
    p.set_defaults(func=cmd_submit)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from lsm_core.classes import TASKS
    from lsm_core.ml.names import ARCHITECTURES  # not torch: lsm_core.ml.nets.REGISTRY agrees with it

    p.add_argument(
        "data",
        nargs="*",
        metavar="DATA",
        help="folders of class folders, or ZIPs whose folders are classes (none with --batches and --gate or "
        "--reviewed)",
    )
    p.add_argument(
        "--reviewed",
        nargs="+",
        type=int,
        metavar="ID",
        help="classified batches whose cells reviewers gave a class (`label`, or Review on the results page): "
        "each counts as its reviewers' consensus; the model that classified them is recorded as the parent",
    )
    p.add_argument(
        "--batches",
        nargs="+",
        type=int,
        metavar="ID",
        help="classified multi-channel batches whose cells --gate labels",
    )
    p.add_argument(
        "--gate",
        metavar="RULE",
        help="reporter gate on each cell's background-subtracted mean, e.g. "
        "'GFP > 1500 -> LT-HSC; GFP < 400 -> MPP' or 'GFP high -> LT-HSC; GFP low -> MPP' (above / below each "
        "batch's Otsu threshold); GFP.integrated for the integrated signal; cells between thresholds are left out",
    )
    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--register", required=True, metavar="NAME", help="the model name; each training adds a version")
    p.add_argument("--arch", default="resnet50_paper", choices=sorted(ARCHITECTURES), help="network architecture")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument(
        "--keep-size",
        action="store_true",
        help="single-cell crops keep the cell's size (cut as the crop's micrometres around their centre at the "
        "image's calibration) instead of being resized to fill the input: size becomes a signal the network sees; "
        "the model keeps cutting them so when it classifies",
    )
    p.add_argument(
        "--patience", type=int, default=5, help="stop after this many epochs without a better validation loss"
    )
    p.add_argument("--imagenet", metavar="PTH", help="torchvision ImageNet weights already on disk (never downloaded)")
    p.add_argument("--test", nargs="*", metavar="DATA", help="a separate labelled test set")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA")
    p.add_argument("--model", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--record",
        action="store_true",
        help="make this evaluation's confusion matrix the model's error profile (administrators; compositions of "
        "its batches are corrected with it)",
    )
    p.set_defaults(func=cmd_evaluate)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    from lsm_core.reports.compare import GROUP_FIELDS

    p.add_argument("batch_ids", nargs="+", type=int, metavar="BATCH_ID")
    p.add_argument("--by", default="age", choices=GROUP_FIELDS, help="age, or another metadata field")
    p.add_argument("--bins", default="young:<26w, aged:>=18m", help="age bins, e.g. 'young:8w-12w, aged:>=18m'")
    p.add_argument("--threshold", type=float, default=0.0, help="count only cells whose score reaches this")
    p.add_argument("--out", required=True, help="FILE.xlsx")
    p.add_argument("--methods", default=None, help="FILE.txt: also write the methods text (the workbook has it too)")
    p.add_argument(
        "--allow-mixed-models",
        action="store_true",
        help="compare batches classified by different models or model versions (refused otherwise)",
    )
    p.add_argument(
        "--fractions",
        default="auto",
        choices=("auto", "corrected", "counted"),
        help="what the per-mouse tests run on: corrected for the models' errors (auto: where every model has an "
        "error profile) or counted",
    )
    p.set_defaults(func=cmd_compare)


def _saliency_arguments(p: argparse.ArgumentParser) -> None:
    from lsm_core.ml.names import SALIENCY_METHODS  # not torch: lsm_core.ml.saliency.METHODS is it

    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--model", required=True)
    p.add_argument("--method", choices=list(SALIENCY_METHODS), default="scorecam")
    p.add_argument(
        "--scorecam-channels",
        type=int,
        default=None,
        metavar="K",
        help="Score-CAM: per cell, the target layer's channels of most variance whose score is computed (8 "
        "more stand for the others; default: LSM_SCORECAM_CHANNELS, else 8; 0: every channel, full Score-CAM)",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM_PER_PIXEL")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_saliency)


def _jobs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_jobs)


def _cancel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", type=int, metavar="JOB_ID")
    p.set_defaults(func=cmd_cancel)


def _review_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("batch_ids", nargs="+", type=int, metavar="BATCH_ID")
    p.add_argument("--order", default="uncertain", help="uncertain (default), class, score or random")
    p.add_argument("--unlabelled", action="store_true", help="only the cells you have not labelled")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_review)


def _label_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("batch_id", type=int, metavar="BATCH_ID")
    p.add_argument(
        "cell", nargs="?", metavar="FILE:CELL", help="the cell as the export names it (file and cell columns)"
    )
    p.add_argument("label", nargs="?", metavar="LABEL")
    p.add_argument("--page", type=int, default=1, help="the page of a multi-page file (from 1)")
    p.add_argument(
        "--from",
        dest="table",
        metavar="FILE.csv",
        help="label many cells at once: a CSV table with the columns file, cell, label and optionally page (the "
        "export's own columns: an exported CSV comes back as it is; rows without a label are left out), all in "
        "one transaction, refused whole with the line numbers of rows that name no cell or an unknown label",
    )
    p.set_defaults(func=cmd_label)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("batch_ids", nargs="+", type=int, metavar="BATCH_ID")
    p.add_argument("--out", required=True, help="FILE.xlsx or FILE.csv")
    p.set_defaults(func=cmd_export)


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("batch_id", type=int, metavar="BATCH_ID")
    p.add_argument("--out", required=True, help="FILE.xlsx")
    p.add_argument(
        "--threshold", type=float, default=0.0, help="count cells with at least this score (default 0: every cell)"
    )
    p.set_defaults(func=cmd_report)


# the subcommands: name -> (help, the function that adds its arguments, its own subcommands and what runs it;
# it imports what they offer as choices, so that only the subcommand run imports its own)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "synth": ("write synthetic DIC-like cells (class folders) and fields of view", _synth_arguments),
    "classify": ("classify every cell in image files, folders or ZIP archives", _classify_arguments),
    "models": ("list or import models", _models_arguments),
    "demo": (
        "make sure the synthetic demo models demo-lsm and demo-aging are trained and registered (one process "
        "trains at a time; LSM_DEMO_RECIPE=tiny for tests)",
        _demo_arguments,
    ),
    "db": ("database maintenance", _db_arguments),
    "blobs": ("the blob store of uploaded files (administrators)", _blobs_arguments),
    "worker": ("claim jobs from the database and run them on one device", _worker_arguments),
    "serve": (
        "upgrade the database, start the app and one worker, and train missing demo models in the background",
        _serve_arguments,
    ),
    "submit": ("queue a batch for classification; prints `batch <ID> job <ID>`", _submit_arguments),
    "train": (
        "train and register a model on labelled cells (class folders or ZIPs, batches and a reporter gate, "
        "and/or the cells reviewers labelled)",
        _train_arguments,
    ),
    "evaluate": ("metrics of a model on labelled cells", _evaluate_arguments),
    "compare": ("compare batches (mice) across ages or a metadata field; writes one workbook", _compare_arguments),
    "saliency": ("saliency maps of every cell: overlay PNGs, maps.npz and cells.csv", _saliency_arguments),
    "jobs": ("list jobs", _jobs_arguments),
    "cancel": ("cancel a job (yours, or any as an administrator): queued at once, running soon", _cancel_arguments),
    "review": ("a batch's cells in the order to review them, with your label and the consensus", _review_arguments),
    "label": (
        "say what a cell is: its class, not-a-cell[:debris|doublet|out_of_focus|edge], none; or many cells at "
        "once from a CSV table (--from)",
        _label_arguments,
    ),
    "export": ("write batches' cells to a spreadsheet", _export_arguments),
    "report": ("write one batch's workbook, as the Results page downloads it", _report_arguments),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. ``only``: the subcommand being run (the first word of the command line, "" for
    none): its arguments alone are added, the others' names and help only, so that running one never imports
    what another offers as choices (the comparison's fields, the modalities: pandas, scipy) and ``lsm --help``
    imports none; None: every subcommand's arguments."""
    parser = argparse.ArgumentParser(
        prog="lsm", description="Classify blood stem cells in DIC images (also: python -m lsm_core)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help)
        if only is None or only == name:
            add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the subcommand is the first word (the command itself takes no option but --help)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=command).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except LsmError as exc:
        _log(f"error: {exc}")
        for file, why in getattr(exc, "files", []):  # FilesRefused: each file with why
            _log(f"  {file}: {why}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
