"""Command line: ``python -m core {analyze,runs,report,errors,delete,train,demo}``.

Every error the user can cause ends in one line on stderr and exit status 2;
Ctrl-C ends with status 130 and leaves no half-written run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.store import RunStore


def _store_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--store", default=None, metavar="PATH",
                        help="run store folder (default: $ARTIFACTS_DIR or ./artifacts)")
    return parent


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H or HxW, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected H or HxW with positive numbers, got {text!r}")
    return vals[0], vals[1]


def _classes_arg(text: str | None) -> list[str] | None:
    if text is None:
        return None
    p = Path(text)
    if p.is_file():
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return [c.strip() for c in text.split(",") if c.strip()]


def build_parser() -> argparse.ArgumentParser:
    store = _store_parent()
    parser = argparse.ArgumentParser(prog="python -m core",
                                     description="Error analysis for Keras image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("analyze", parents=[store], help="predict a data set with a model and store the run")
    a.add_argument("--model", required=True, help=".keras, .h5 or SavedModel folder")
    a.add_argument("--data", required=True,
                   help="class-folder tree, flat <class>_<n>.<ext> folder, CSV manifest, or fashion-mnist/digits")
    a.add_argument("--layer", default=None, help="layer whose output is the embedding "
                   "(default: the input of the last Dense layer); OUTER/INNER for a layer inside a "
                   "nested backbone, e.g. vgg16/block5_pool")
    a.add_argument("--name", default=None, help="run name (default: <model>-<data>-<hash>)")
    a.add_argument("--classes", default=None,
                   help="class order: a file with one name per line, or comma-separated names "
                        "(default: classes.txt beside the model, else in the data folder, else sorted)")
    a.add_argument("--batch-size", type=int, default=128)
    a.add_argument("--image-size", type=_image_size, default=None,
                   help="HxW, only for models that accept any size")
    a.add_argument("--scale", choices=["auto", "raw", "unit", "symmetric"], default="auto",
                   help="pixel range fed to the model: raw 0..255, unit 0..1, symmetric -1..1 "
                        "(auto: raw if the model rescales its input itself, else unit)")
    a.add_argument("--no-projection", action="store_true", help="skip the UMAP map")
    a.add_argument("--force", action="store_true", help="recompute even if a cached run exists")
    a.add_argument("--unsafe-load", action="store_true",
                   help="allow models that run arbitrary code when loaded (Lambda layers); trusted files only")

    sub.add_parser("runs", parents=[store], help="list stored runs")

    r = sub.add_parser("report", parents=[store], help="write the per-class table as CSV")
    r.add_argument("run")
    r.add_argument("--out", default=None, help="CSV file (default: print to stdout)")

    e = sub.add_parser("errors", parents=[store], help="write misclassified images, most confident first")
    e.add_argument("run")
    e.add_argument("--min-confidence", type=float, default=0.0)
    e.add_argument("--split", default=None, help="split to list (default: the run's evaluation split; 'all')")
    e.add_argument("--out", default=None, help="CSV file (default: print to stdout)")

    d = sub.add_parser("delete", parents=[store], help="delete a stored run")
    d.add_argument("run")

    t = sub.add_parser("train", parents=[store], help="train a model with a recipe, then analyse it")
    dm = sub.add_parser("demo", parents=[store], help="train and analyse the Fashion-MNIST demo run")
    try:
        from core import training

        training.add_train_arguments(t)
    except ImportError:
        pass
    try:
        from core import demo

        demo.add_demo_arguments(dm)
    except ImportError:
        pass
    return parser


def _write_csv(df, out: str | None) -> None:
    if out is None:
        df.to_csv(sys.stdout, index=False)
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(f"Wrote {len(df):,} rows to {out}", file=sys.stderr)


def _trained_class_order(model_path: Path) -> list[str] | None:
    """The order the model was trained with: classes.txt, or the recipe.json `train` writes, beside it."""
    import json

    folder = model_path if model_path.is_dir() else model_path.parent
    if (folder / "classes.txt").is_file():
        print(f"Class order from {folder / 'classes.txt'}", file=sys.stderr)
        return _classes_arg(str(folder / "classes.txt"))
    if (folder / "recipe.json").is_file():
        try:
            classes = json.loads((folder / "recipe.json").read_text()).get("classes")
        except (json.JSONDecodeError, AttributeError):
            return None
        if isinstance(classes, list) and classes:
            print(f"Class order from {folder / 'recipe.json'}", file=sys.stderr)
            return [str(c) for c in classes]
    return None


def cmd_analyze(args) -> int:
    from core.analyze import analyze
    from core.datasets import load_dataset

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive. Received: {args.batch_size}")
    model_path = Path(args.model)
    from core.models import model_format

    model_format(model_path)  # fail fast on a wrong path before decoding anything
    classes = _classes_arg(args.classes)
    if classes is None:
        classes = _trained_class_order(model_path)
    dataset = load_dataset(args.data, classes=classes)
    print(f"Data: {dataset!r}", file=sys.stderr)
    run = analyze(model_path, dataset, store=RunStore(args.store), run_id=args.name, layer=args.layer,
                  batch_size=args.batch_size, force=args.force, unsafe=args.unsafe_load,
                  projection=not args.no_projection, scale=args.scale, image_size=args.image_size)
    print(run.id)
    return 0


def cmd_runs(args) -> int:
    store = RunStore(args.store)
    runs = store.list_runs()
    if not runs:
        print(f"No runs in {store.root}. Make one: python -m core demo, or "
              "python -m core analyze --model PATH --data PATH", file=sys.stderr)
        return 0
    header = f"{'run':<40} {'created':<26} {'model':<24} {'data':<18} {'images':>9} {'classes':>7} {'accuracy':>8}"
    print(header)
    for s in runs:
        old = "" if s.schema_version == 1 else f"  (schema {s.schema_version}: re-run)"
        print(f"{s.run_id:<40} {s.created:<26} {s.model[:24]:<24} {s.data[:18]:<18} {s.n_images:>9,} "
              f"{s.n_classes:>7} {s.accuracy:>8.4f}{old}")
    return 0


def cmd_report(args) -> int:
    run = RunStore(args.store).load(args.run)
    data = run.per_class_csv()
    if args.out is None:
        sys.stdout.write(data.decode())
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_bytes(data)
        print(f"Wrote {len(run.classes)} classes to {args.out}", file=sys.stderr)
    return 0


def cmd_errors(args) -> int:
    from core.reports import errors_table

    run = RunStore(args.store).load(args.run)
    _write_csv(errors_table(run, min_confidence=args.min_confidence, split=args.split), args.out)
    return 0


def cmd_delete(args) -> int:
    RunStore(args.store).delete(args.run)
    print(f"Deleted run {args.run}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from core import training

    return training.train_command(args)


def cmd_demo(args) -> int:
    from core import demo

    return demo.demo_command(args)


COMMANDS = {"analyze": cmd_analyze, "runs": cmd_runs, "report": cmd_report, "errors": cmd_errors,
            "delete": cmd_delete, "train": cmd_train, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's banner out of the output
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("Interrupted: nothing half-written was kept.", file=sys.stderr)
        return 130
    except (ValueError, LookupError, RuntimeError, OSError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 2
