"""The ``python -m lsm_core`` command line. Subcommands are one function each, found through one dict."""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterator

from lsm_core.errors import LsmError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_synth(args: argparse.Namespace) -> int:
    from lsm_core.synthetic import write_dataset

    if args.n < 0 or args.fields < 0:
        raise LsmError("--n and --fields must be 0 or more")
    counts = write_dataset(args.task, args.n, args.out, fields=args.fields, seed=args.seed)
    _log(f"wrote synthetic {args.task} data under {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lsm_core.classify import Summary, classify_records, find_params_for, result_columns
    from lsm_core.export import write_table
    from lsm_core.images import read_inputs
    from lsm_core.models import ModelStore
    from lsm_core.predict import Predictor

    package = ModelStore().resolve(args.model)
    predictor = Predictor(package, device=args.device, batch_size=args.batch_size)
    params = find_params_for(predictor, args.pixel_size)
    _log(f"model {package.manifest.label} on {predictor.device}{' (bf16)' if predictor.bf16 else ''}")
    summary = Summary()
    n_classes = len(predictor.classes)
    columns = result_columns(predictor.classes)
    progress = tqdm(read_inputs(args.inputs), unit=" image", file=sys.stderr, disable=None)
    rows: Iterator[list] = (row.values(n_classes) for row in classify_records(progress, predictor, params, summary))
    if args.out:
        write_table(args.out, columns, rows)
    else:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    progress.close()
    dropped = ", ".join(f"{v} {k}" for k, v in summary.dropped.items() if v)
    _log(
        f"{summary.cells} cells classified from {summary.images} images; {summary.failed} failed; "
        f"{summary.no_cells} without cells" + (f"; dropped {dropped}" if dropped else "")
        + (f"; written to {args.out}" if args.out else "")
    )
    if summary.cells == 0:
        _log("nothing could be classified")
        return 1
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from lsm_core.models import ModelStore

    packages = ModelStore().packages()
    if not packages:
        _log("no models registered; `python -m lsm_core demo` registers the synthetic demo models")
        return 0
    print("name\tversion\ttask\tarchitecture\tclasses\tdemo\tsha256")
    for p in packages:
        m = p.manifest
        demo = "synthetic demo" if m.demo else ""
        print(f"{m.name}\t{m.version}\t{m.task}\t{m.architecture}\t{','.join(m.classes)}\t{demo}\t{m.weights_sha256[:12]}")
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from lsm_core.models import ModelStore

    package = ModelStore().import_weights(args.weights, args.manifest)
    _log(f"registered {package.manifest.label} ({package.manifest.task}) at {package.path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lsm_core.demo import ensure_demo_models

    for package in ensure_demo_models(log=_log):
        _log(f"{package.manifest.label}: ready")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lsm_core", description="Classify blood stem cells in DIC images.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write synthetic DIC-like cells (class folders) and fields of view")
    p.add_argument("--task", choices=["lsm", "aging"], required=True)
    p.add_argument("--n", type=int, required=True, help="number of single-cell crops in all")
    p.add_argument("--out", required=True)
    p.add_argument("--fields", type=int, default=0, help="number of 2048x2048 16-bit fields of view")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("classify", help="classify every cell in image files, folders or ZIP archives")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--model", required=True, help="a registered name (name or name:version) or a package folder")
    p.add_argument("--out", help="FILE.csv or FILE.xlsx (default: CSV on standard output)")
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM_PER_PIXEL",
                   help="the microscope's calibration (default: the model's, 0.2 for the demo models)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: LSM_DEVICE or auto)")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("models", help="list or import models")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list the registered models")
    q.set_defaults(func=cmd_models_list)
    q = msub.add_parser("import", help="register a state_dict (.pt, .pth, .safetensors) with a manifest.json")
    q.add_argument("weights")
    q.add_argument("--manifest", required=True)
    q.set_defaults(func=cmd_models_import)

    p = sub.add_parser("demo", help="make sure the synthetic demo models demo-lsm and demo-aging are registered")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except LsmError as exc:
        _log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
