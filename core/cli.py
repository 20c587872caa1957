"""Command line: ``python -m core {analyze,import,runs,report,compare,errors,delete,explain,train,demo,review,diagnose,label-issues,duplicates}``.

Every error the user can cause (``core.errors.UserError``, or an OSError such as a full disk)
ends in one line on stderr and exit status 2; anything else is a bug and shows its traceback
(``--debug`` or ``CLASSIFIER_DEBUG=1`` shows it for user errors too). Ctrl-C ends with status
130 and leaves no half-written run.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from core.data.preprocess import CHANNEL_ORDERS, PREPROCESS_CHOICES, RESIZE_METHODS
from core.demo import DEMO_EPOCHS
from core.errors import UserError, debug_enabled, first_line
from core.model import formats
from core.model.recipes import (
    AUGMENTATIONS,
    BACKBONES,
    LR_SCHEDULES,
    OPTIMIZERS,
    RECIPES,
    Recipe,
    parse_int_list,
    parse_size,
)
from core.quiet import quiet_start
from core.run.store import RunStore


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


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m core train``."""
    d = Recipe()
    parser.add_argument("--data", required=True, help="data folder, CSV manifest, 'fashion-mnist' or 'digits'")
    parser.add_argument("--recipe", required=True, help=f"one of {', '.join(RECIPES)}")
    parser.add_argument("--name", default=None, help="run name (default: <recipe>-<data>-<time>)")
    parser.add_argument("--out", default=None, help="folder for the model (default: models/<run name>/)")
    parser.add_argument("--no-analyze", action="store_true", help="train only; do not write an analysis run")
    parser.add_argument("--no-projection", action="store_true", help="analysis without the UMAP map")
    parser.add_argument("--corrections", default=None, metavar="CSV",
                        help="relabel and drop images as reviewed: a file written by "
                             "'python -m core review export'")
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default=None, help=f"transfer backbone: {', '.join(BACKBONES)}")
    g.add_argument("--weights", default=d.weights, help="imagenet (from the Keras cache or downloaded) or none")
    g.add_argument("--image-size", default=None, help="H or HxW (default: the data's size for pixel data, "
                   "64 for small-cnn/mlp, 128 for transfer)")
    g.add_argument("--channels", type=int, default=None, help="1 (gray) or 3 (RGB); default from the data")
    g.add_argument("--conv-filters", default=",".join(map(str, d.conv_filters)), help="e.g. 32,64")
    g.add_argument("--dense-units", default=",".join(map(str, d.dense_units)), help="e.g. 256,128 (last = embedding)")
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--batch-norm", action="store_true", help="BatchNormalization after each Dense (and conv)")
    g.add_argument("--fine-tune", type=int, default=0, metavar="N",
                   help="then unfreeze the top N backbone layers (BatchNorm stays frozen), lr/10")
    g.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs)
    o = parser.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=d.batch_size)
    o.add_argument("--epochs", type=int, default=d.epochs)
    o.add_argument("--learning-rate", type=float, default=d.learning_rate)
    o.add_argument("--optimizer", default=d.optimizer, help=f"one of {', '.join(OPTIMIZERS)}")
    o.add_argument("--lr-schedule", default=d.lr_schedule, help=f"one of {', '.join(LR_SCHEDULES)}")
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--val-split", type=float, default=d.val_split,
                   help="stratified validation fraction when the data has no 'val' split")
    o.add_argument("--seed", type=int, default=d.seed)
    o.add_argument("--augment", default="", help=f"comma-separated: {','.join(AUGMENTATIONS)}")
    o.add_argument("--class-weights", default=None, help="'balanced' (sklearn compute_class_weight)")
    o.add_argument("--oversample-to", type=int, default=None, metavar="N",
                   help="augmented copies of classes with fewer than N training images, up to N")
    o.add_argument("--no-early-stopping", action="store_true")
    o.add_argument("--patience", type=int, default=d.patience)
    o.add_argument("--no-checkpoint", action="store_true")
    o.add_argument("--no-reduce-lr", action="store_true")
    o.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training when the next epoch would not fit in this many seconds")
    o.add_argument("--mixed-precision", action="store_true", help="bfloat16 compute (fast on recent Intel CPUs)")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The Recipe that ``python -m core train``'s options describe (validated)."""
    return Recipe(
        recipe=args.recipe, backbone=args.backbone, weights=args.weights,
        image_size=parse_size(args.image_size) if args.image_size else None, channels=args.channels,
        conv_filters=parse_int_list(args.conv_filters, option="--conv-filters"),
        dense_units=parse_int_list(args.dense_units, option="--dense-units"), dropout=args.dropout,
        batch_norm=args.batch_norm, fine_tune=args.fine_tune, fine_tune_epochs=args.fine_tune_epochs,
        batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.learning_rate,
        optimizer=args.optimizer, lr_schedule=args.lr_schedule, label_smoothing=args.label_smoothing,
        val_split=args.val_split, seed=args.seed,
        augment=tuple(a.strip() for a in args.augment.split(",") if a.strip()),
        class_weights=args.class_weights, oversample_to=args.oversample_to,
        early_stopping=not args.no_early_stopping, patience=args.patience, checkpoint=not args.no_checkpoint,
        reduce_lr=not args.no_reduce_lr, time_budget_s=args.time_budget,
    ).validate()


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m core demo``."""
    parser.add_argument("--retrain", action="store_true",
                        help="train the demo model here instead of analysing with the shipped one "
                             f"(core/demo_model/): {DEMO_EPOCHS} epochs, several minutes on 2 cores")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"retrain for this many epochs (default {DEMO_EPOCHS}; implies --retrain)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="retrain within this wall-clock budget, the schedule planned over it "
                             "(implies --retrain)")
    parser.add_argument("--out", default=None, help="folder for the retrained model (default: models/<run name>/)")
    parser.add_argument("--export-to", default=None, metavar="DIR",
                        help="also write the retrained model as shipped (float32, no optimizer state) to DIR, "
                             "then analyse with it (implies --retrain; how core/demo_model/ was made)")
    parser.add_argument("--no-projection", action="store_true", help="skip the UMAP map")
    parser.add_argument("--background-projection", action="store_true",
                        help="return as soon as the run is usable; a background process adds the UMAP map")


def add_review_arguments(parser: argparse.ArgumentParser, store: argparse.ArgumentParser) -> None:
    """Actions of ``python -m core review`` (verdicts on a run's images; see core.review)."""
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--run", required=True, help="the run whose images are reviewed")
    actions = parser.add_subparsers(dest="review_action", required=True, metavar="ACTION")
    m = actions.add_parser("mark", parents=[store, run], help="record a verdict on one image (prints its id)")
    m.add_argument("--path", required=True, help="the image's path as the run lists it")
    m.add_argument("--verdict", required=True, help="model-wrong, label-wrong, ambiguous or exclude")
    m.add_argument("--label", default=None, help="the right class (with --verdict label-wrong only)")
    m.add_argument("--note", default=None, help="a note kept with the verdict")
    m.add_argument("--reviewer", default=None, help="who decides (default: the OS user name)")
    ls = actions.add_parser("list", parents=[store, run], help="the verdicts in force on the run's images (CSV)")
    ls.add_argument("--path", default=None, help="only this image")
    ls.add_argument("--history", action="store_true", help="every change, undos included, oldest first")
    ls.add_argument("--out", default=None, help="CSV file (default: print to stdout)")
    u = actions.add_parser("undo", parents=[store, run], help="undo the newest verdict in force on one image")
    u.add_argument("--path", required=True, help="the image's path as the run lists it")
    u.add_argument("--reviewer", default=None, help="who undoes it (default: the OS user name)")
    x = actions.add_parser("export", parents=[store, run], help="write the corrections CSV (train --corrections)")
    x.add_argument("--out", required=True, help="CSV file: path, given_label, new_label, verdict, note, reviewer, time")
    f = actions.add_parser("manifest", parents=[store, run],
                           help="write a CSV manifest path,label,split with the corrected labels, excluded left out")
    f.add_argument("--out", required=True,
                   help="CSV file in the data root (or a folder above it), e.g. DATA_ROOT/fixed.csv")
    s = actions.add_parser("metrics", parents=[store, run],
                           help="the per-class table of the evaluation split as reviewed (CSV)")
    s.add_argument("--out", default=None, help="CSV file (default: print to stdout)")


def build_parser() -> argparse.ArgumentParser:
    store = _store_parent()
    parser = argparse.ArgumentParser(prog="python -m core",
                                     description="Error analysis for Keras image classifiers.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error (also CLASSIFIER_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("analyze", parents=[store], help="predict a data set with a model and store the run")
    a.add_argument("--model", required=True,
                   help="the model: " + ", ".join(f.description for f in formats.all_formats().values()))
    a.add_argument("--data", required=True,
                   help="class-folder tree, flat <class>_<n>.<ext> folder, CSV manifest, or fashion-mnist/digits")
    a.add_argument("--layer", default=None, help="layer whose output is the embedding "
                   "(default: the input of the last Dense layer); OUTER/INNER for a layer inside a "
                   "nested backbone, e.g. vgg16/block5_pool; for an ONNX model a node output name "
                   "(default: the input of the last Gemm/MatMul)")
    a.add_argument("--name", default=None, help="run name (default: <model>-<data>-<hash>)")
    a.add_argument("--classes", default=None,
                   help="class order: a file with one name per line, or comma-separated names "
                        "(default: classes.txt beside the model, else in the data folder, else sorted)")
    a.add_argument("--batch-size", type=int, default=128)
    a.add_argument("--image-size", type=_image_size, default=None,
                   help="HxW, only for models that accept any size")
    a.add_argument("--preprocess", "--scale", dest="scale", choices=PREPROCESS_CHOICES, default="auto",
                   help="the preprocessing the model was trained with: raw 0..255, unit 0..1 (x/255), symmetric "
                        "-1..1, imagenet (torchvision's Normalize), or keras.applications' preprocess_input "
                        "modes caffe (VGG16/ResNet), tf (MobileNet/Xception/Inception: -1..1), torch (DenseNet) "
                        "(auto: raw if the model rescales its input itself, else unit; see the README's table)")
    a.add_argument("--channel-order", choices=CHANNEL_ORDERS, default="rgb",
                   help="channel order the model was trained on: bgr for images read with cv2.imread and "
                        "not converted (default: rgb)")
    a.add_argument("--resize", choices=tuple(RESIZE_METHODS), default="area",
                   help="how pictures were resized to the model's input in training: area (cv2.INTER_AREA, the "
                        "default), linear (cv2.resize's default, tf.image.resize, Keras' "
                        "image_dataset_from_directory) or nearest (keras.utils.load_img(target_size=...))")
    a.add_argument("--history", default=None, metavar="JSON",
                   help="the model's training history (Keras History.history saved as JSON, or "
                        "{\"val_accuracy\": 0.93}): the analysis says when its accuracy is far below it")
    a.add_argument("--no-input-check", action="store_true",
                   help="skip the check of other preprocessings and class orders on a sample of 512 images")
    a.add_argument("--no-projection", action="store_true", help="skip the UMAP map")
    a.add_argument("--seed", type=int, default=0, help="seed of the UMAP map (part of the run's config)")
    a.add_argument("--force", action="store_true",
                   help="recompute even if a run of the same config exists, and replace a run of the "
                        "same --name made from another config")
    a.add_argument("--unsafe-load", action="store_true",
                   help="allow models that run arbitrary code when loaded (Lambda layers); trusted files only")
    ray_group = a.add_argument_group("engine", "where images are decoded and predicted; the run is the same")
    ray_group.add_argument("--engine", choices=["local", "ray"], default="local",
                           help="local: this process; ray: Ray Data actors, one model each "
                                "(pip install -r requirements-ray.txt)")
    ray_group.add_argument("--ray-address", default=None, metavar="ADDR",
                           help="an existing Ray cluster (HEAD_IP:6379, or auto for the one this machine is part of); "
                                "default: a local Ray on this machine")
    ray_group.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                           help="CPUs of the local Ray (default: all of this machine's)")
    ray_group.add_argument("--ray-actors", type=int, default=None, metavar="N",
                           help="model copies working at once (default: one per CPU of the cluster)")

    im = sub.add_parser("import", parents=[store],
                        help="make a run from predictions computed elsewhere (any framework): CSV or .npz")
    im.add_argument("--data", required=True,
                    help="the data set the predictions are of (same forms as analyze --data)")
    im.add_argument("--predictions", required=True, metavar="FILE",
                    help="CSV with a 'path' column and one probability column per class (named by class), "
                         "or .npz with 'paths' (unicode strings), 'probs' (N, K) and optional 'embeddings', "
                         "'classes'")
    im.add_argument("--embeddings", default=None, metavar="FILE.npy", help="(N, D) embeddings, rows in the "
                    "predictions file's order (for the UMAP map)")
    im.add_argument("--name", default=None, help="run name (default: <predictions file>-<data>-<hash>)")
    im.add_argument("--classes", default=None,
                    help="class order: a file with one name per line, or comma-separated names "
                         "(default: classes.txt in the data folder, else sorted)")
    im.add_argument("--no-projection", action="store_true", help="skip the UMAP map")
    im.add_argument("--seed", type=int, default=0, help="seed of the UMAP map (part of the run's config)")
    im.add_argument("--force", action="store_true",
                    help="recompute even if a run of the same config exists, and replace a run of the "
                         "same --name made from another config")

    sub.add_parser("runs", parents=[store], help="list stored runs")

    r = sub.add_parser("report", parents=[store], help="write the per-class table as CSV, or the whole "
                       "error-analysis report as one HTML file (--html) or Markdown (--markdown)")
    r.add_argument("run")
    r.add_argument("--out", default=None, help="CSV file (default: print to stdout)")
    r.add_argument("--html", default=None, metavar="FILE", help="write the report as one self-contained HTML file")
    r.add_argument("--markdown", default=None, metavar="DIR", help="write the report as DIR/report.md + DIR/images/")
    r.add_argument("--compare", default=None, metavar="OTHER_RUN",
                   help="add the comparison with another run on the same images (deltas are RUN - OTHER_RUN)")
    r.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="at most N thumbnails in the report (bounds its size; default 120)")

    c = sub.add_parser("compare", parents=[store], help="compare two runs on the images both hold out: "
                       "metrics.csv, per_class.csv (B - A) and flips.csv")
    c.add_argument("a", metavar="A")
    c.add_argument("b", metavar="B")
    c.add_argument("--out", default=None, metavar="DIR",
                   help="folder for metrics.csv, per_class.csv, flips.csv (default: print the metrics as CSV)")

    e = sub.add_parser("errors", parents=[store], help="write misclassified images, most confident first")
    e.add_argument("run")
    e.add_argument("--min-confidence", type=float, default=0.0)
    e.add_argument("--split", default=None, help="split to list (default: the run's evaluation split; 'all')")
    e.add_argument("--out", default=None, help="CSV file (default: print to stdout)")

    d = sub.add_parser("delete", parents=[store], help="delete a stored run")
    d.add_argument("run")

    x = sub.add_parser("explain", parents=[store], help="attention maps (Grad-CAM or occlusion) of a run's images: cams.npy, index.csv, "
                       "one overlay PNG per image (the most confident errors, or one confusion cell)")
    x.add_argument("run")
    x.add_argument("--out", required=True, metavar="DIR", help="folder for cams.npy, index.csv and the PNGs")
    x.add_argument("--true", default=None, metavar="CLASS", help="true class of the images to explain")
    x.add_argument("--predicted", default=None, metavar="CLASS", help="predicted class of the images to explain "
                   "(both: that confusion cell; neither: the errors)")
    x.add_argument("--limit", type=int, default=24, metavar="N", help="most confident N images (default: 24)")
    x.add_argument("--split", default=None, help="split to take them from (default: the run's evaluation split; "
                   "'all')")
    x.add_argument("--cam-layer", default=None, metavar="NAME", help="layer whose feature map is weighted "
                   "(default: the last convolutional map, inside a nested backbone too); OUTER/INNER for a "
                   "layer inside a nested backbone, e.g. vgg16/block5_conv3")
    x.add_argument("--method", choices=["gradcam", "gradcam++", "occlusion"], default="gradcam",
                   help="gradcam/gradcam++: Keras models; occlusion: any model (ONNX, SavedModel, Keras), "
                   "37 forward passes per image, the cost printed")
    x.add_argument("--unsafe-load", action="store_true", help="load the run's model even if it can run code "
                   "(a Lambda layer, a SavedModel): only for a file you trust")

    g = sub.add_parser("diagnose", parents=[store],
                       help="why errors happen: every diagnosis (label issues, calibration, ...) stored in the run",
                       epilog="Exit status 1 when a diagnosis was skipped (its reason is printed); the others are kept.")
    g.add_argument("run")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="also write one CSV per finding (<kind>.<table>.csv) and summary.json to DIR")
    g.add_argument("--only", default=None, metavar="KINDS", help="comma-separated kinds (default: all)")
    g.add_argument("--force", action="store_true", help="recompute even where a current result is stored")

    li = sub.add_parser("label-issues", parents=[store],
                        help="images of the evaluated split whose label is probably wrong, most likely first")
    li.add_argument("run")
    li.add_argument("--out", default=None, help="CSV file: path, given_label, suggested_label, score "
                                               "(default: print to stdout)")
    li.add_argument("--issues-only", action="store_true",
                    help="only the images cleanlab's confident learning flags (default: every evaluated image)")
    li.add_argument("--force", action="store_true", help="recompute even where a current result is stored")

    du = sub.add_parser("duplicates", parents=[store],
                        help="exact and near duplicate images within and across splits (leakage), as CSV")
    du.add_argument("run")
    du.add_argument("--out", default=None, help="CSV file: path_a, path_b, split_a, split_b, similarity, kind, "
                                               "labels_agree, label_a, label_b, row_a, row_b, transform (how b "
                                               "differs from a: 'flipped left-right, cropped to 90%%'), residual; "
                                               "cross-split pairs first (default: print to stdout)")
    du.add_argument("--cross-split", action="store_true", help="only pairs whose two images are in different splits")
    du.add_argument("--force", action="store_true", help="recompute even where a current result is stored")

    ca = sub.add_parser("causes", parents=[store],
                        help="a cause for every misclassified image (label, model, ambiguous, atypical, copy) with "
                             "its evidence, as CSV",
                        epilog="Neighbours come from the run's train split (else val, else the evaluated images "
                               "left out one by one); causes that cannot be assessed are named on stderr.")
    ca.add_argument("run")
    ca.add_argument("--out", default=None, help="CSV file: path, given_label, predicted_label, cause, confidence, "
                                               "suggested_label, evidence; the model's most confident errors "
                                               "first (default: print to stdout)")
    ca.add_argument("--force", action="store_true", help="recompute even where a current result is stored")

    add_train_arguments(sub.add_parser("train", parents=[store], help="train a model with a recipe, then analyse it"))
    add_review_arguments(sub.add_parser("review", help="verdicts on a run's images: mark, list, undo, export, "
                                                     "manifest, metrics"), store)
    add_demo_arguments(sub.add_parser("demo", parents=[store], help="train and analyse the Fashion-MNIST demo run"))
    return parser


def _write_csv(df, out: str | None) -> None:
    if out is None:
        df.to_csv(sys.stdout, index=False)
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(f"Wrote {len(df):,} rows to {out}", file=sys.stderr)


def _trained_class_order(model_path: Path) -> tuple[list[str] | None, str | None]:
    """The order the model was trained with, and where from: classes.txt, or the recipe.json
    `train` writes, beside the model; (None, None) when neither is there."""
    import json

    folder = model_path if model_path.is_dir() else model_path.parent
    if (folder / "classes.txt").is_file():
        return _classes_arg(str(folder / "classes.txt")), f"from {folder / 'classes.txt'}"
    if (folder / "recipe.json").is_file():
        try:
            classes = json.loads((folder / "recipe.json").read_text()).get("classes")
        except (json.JSONDecodeError, AttributeError):
            return None, None
        if isinstance(classes, list) and classes:
            return [str(c) for c in classes], f"from {folder / 'recipe.json'}"
    return None, None


def _history_arg(path: str | None) -> tuple[float, str] | None:
    """(accuracy, where from) in a --history JSON file, or None when not given."""
    import json

    from core.model.input_check import expected_from_training

    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--history file does not exist: {str(p)!r}")
    try:
        found = expected_from_training(json.loads(p.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--history {str(p)!r} is not JSON: {exc}") from None
    if found is None:
        raise UserError(f"--history {str(p)!r} has no val_accuracy (or test_accuracy) to compare with")
    return found[0], f"{found[1]} in {p.name}"


def cmd_analyze(args) -> int:
    from core.data.datasets import load_dataset
    from core.run.analyze import analyze

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive. Received: {args.batch_size}")
    from core.run.ray_engine import engine_options

    # a missing Ray or a --ray-* option without --engine ray stops here, before any data is read
    engine_options(args.engine, address=args.ray_address, num_cpus=args.ray_cpus, actors=args.ray_actors)
    model_path = Path(args.model)
    from core.model.load import model_format

    model_format(model_path)  # fail fast on a wrong path before decoding anything
    expected = _history_arg(args.history)
    classes = _classes_arg(args.classes)
    class_source = "given by --classes" if classes is not None else None
    if classes is None:
        classes, class_source = _trained_class_order(model_path)
    dataset = load_dataset(args.data, classes=classes)
    class_source = class_source or _data_class_source(args.data, dataset)
    print(f"Data: {dataset!r}", file=sys.stderr)
    print(f"Class order {class_source}: {_names_preview(dataset.classes)}", file=sys.stderr)
    run = analyze(model_path, dataset, store=RunStore(args.store), run_id=args.name, layer=args.layer,
                  batch_size=args.batch_size, force=args.force, unsafe=args.unsafe_load,
                  projection=not args.no_projection, scale=args.scale, channel_order=args.channel_order,
                  input_check=not args.no_input_check, expected_accuracy=expected, class_source=class_source,
                  image_size=args.image_size, seed=args.seed, engine=args.engine, ray_address=args.ray_address,
                  ray_cpus=args.ray_cpus, ray_actors=args.ray_actors, resize=args.resize)
    for line in run.model_info.input_warnings + run.model_info.input_notes + run.notes:
        print(line, file=sys.stderr)
    print(run.id)
    return 0


def _names_preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} classes)" if len(names) > limit else "")


def _data_class_source(data: str, dataset) -> str:
    """Where ``load_dataset`` took the class order from when none was given."""
    from core.data.datasets import BUILTINS

    if str(data) in BUILTINS:
        return f"of the built-in data set {data!r}"
    p = Path(data)
    if p.is_dir() and (p / "classes.txt").is_file():
        return f"from {p / 'classes.txt'}"
    return "sorted alphabetically (no --classes and no classes.txt beside the model or in the data folder)"


def cmd_import(args) -> int:
    """``python -m core import``: prints the run id."""
    from core.data.datasets import load_dataset
    from core.run.importer import import_predictions

    predictions = Path(args.predictions)
    if not predictions.is_file():  # fail fast, before the data set is listed
        raise UserError(f"Predictions file does not exist: {str(predictions)!r}")
    dataset = load_dataset(args.data, classes=_classes_arg(args.classes))
    print(f"Data: {dataset!r}", file=sys.stderr)
    run = import_predictions(dataset, predictions, store=RunStore(args.store), run_id=args.name,
                             embeddings_file=args.embeddings, projection=not args.no_projection,
                             seed=args.seed, force=args.force)
    print(run.id)
    return 0


def cmd_runs(args) -> int:
    store = RunStore(args.store)  # None: $ARTIFACTS_DIR or the default store
    if store.root.exists() and not store.root.is_dir():
        raise UserError(f"{'--store ' + str(args.store) if args.store else 'The store ' + str(store.root)}: "
                        "not a folder")
    runs = store.list_runs()
    if not runs:
        print(f"No runs in {store.root}. Make one: python -m core demo, or "
              "python -m core analyze --model PATH --data PATH", file=sys.stderr)
        return 0
    header = f"{'run':<40} {'created':<26} {'model':<24} {'data':<18} {'images':>9} {'classes':>7} {'accuracy':>8}"
    print(header)
    for s in runs:
        if not s.ok:
            print(f"{s.run_id:<40} BROKEN: {s.problem}")
            continue
        print(f"{s.run_id:<40} {s.created:<26} {s.model[:24]:<24} {s.data[:18]:<18} {s.n_images:>9,} "
              f"{s.n_classes:>7} {s.accuracy:>8.4f}")
    return 0


def cmd_report(args) -> int:
    run = RunStore(args.store).load(args.run)
    if args.html or args.markdown or args.compare or args.max_images is not None:
        return _write_report(args, run)
    data = run.per_class_csv()
    if args.out is None:
        sys.stdout.write(data.decode())
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_bytes(data)
        print(f"Wrote {len(run.classes)} classes to {args.out}", file=sys.stderr)
    return 0


def _write_report(args, run) -> int:
    from core.errors import UserError
    from core.report.document import DEFAULT_MAX_IMAGES, build_report, write_html, write_markdown

    if not (args.html or args.markdown):
        raise UserError("--compare and --max-images go with --html FILE or --markdown DIR.")
    if args.out:
        raise UserError("--out writes the per-class CSV; give it alone, or --html/--markdown without it.")
    other = RunStore(args.store).load(args.compare) if args.compare else None
    max_images = DEFAULT_MAX_IMAGES if args.max_images is None else args.max_images
    report = build_report(run, compare_with=other, max_images=max_images)
    if args.html:
        size = write_html(report, args.html)
        print(f"Wrote the report of run '{run.id}' to {args.html} ({size / 1e6:.2f} MB, "
              f"{report.n_images} images)", file=sys.stderr)
    if args.markdown:
        files = write_markdown(report, args.markdown)
        print(f"Wrote the report of run '{run.id}' to {Path(args.markdown) / 'report.md'} "
              f"(+ {len(files) - 1} images)", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from core.analysis.compare import compare

    store = RunStore(args.store)
    a, b = store.load(args.a), store.load(args.b)
    comparison = compare(a, b)
    if args.out is None:
        sys.stdout.write(comparison.metrics.to_csv(index=False))
    else:
        comparison.write(args.out)
    acc_a, acc_b = comparison.metric("accuracy")
    print(f"Compared '{a.id}' (A) and '{b.id}' (B) {comparison.basis}: accuracy {acc_a:.4f} -> {acc_b:.4f}, "
          f"{comparison.n_fixed:,} images fixed by B, {comparison.n_broken:,} broken"
          + (f"; wrote metrics.csv, per_class.csv, flips.csv to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def cmd_errors(args) -> int:
    from core.report.tables import errors_table

    run = RunStore(args.store).load(args.run)
    _write_csv(errors_table(run, min_confidence=args.min_confidence, split=args.split), args.out)
    return 0


def cmd_delete(args) -> int:
    RunStore(args.store).delete(args.run)
    print(f"Deleted run {args.run}", file=sys.stderr)
    return 0


def cmd_explain(args) -> int:
    """``python -m core explain``: maps of the selected rows (cached in the run), written to --out."""
    from core.analysis.gradcam import explain_rows, select_rows, write_explanations

    run = RunStore(args.store).load(args.run)
    _warn_if_data_changed(run)
    rows = select_rows(run, true_class=args.true, predicted_class=args.predicted, split=args.split,
                       limit=args.limit)
    if len(rows) == 0:
        cell = f"true {args.true or 'any'}, predicted {args.predicted or 'any'}"
        raise UserError(f"Nothing to explain: no {'images' if args.true and args.predicted else 'errors'} "
                         f"({cell}) in split {args.split or run.eval_split!r} of run {run.id!r}")
    explainer = None
    if args.unsafe_load:  # the opt-in comes from this command line, never from the run's manifest
        if args.method == "occlusion":
            from core.analysis import occlusion
            from core.run.analyze import load_run_model

            occlusion.remember_model(run, load_run_model(run, unsafe=True))
        else:
            from core.analysis.gradcam import explainer_for_run

            explainer = explainer_for_run(run, layer=args.cam_layer, unsafe=True)
    t0 = time.perf_counter()
    attention = explain_rows(run, rows, method=args.method, layer=args.cam_layer, explainer=explainer,
                             progress=True)
    seconds = time.perf_counter() - t0
    index = write_explanations(run, attention, args.out)
    for row, reason in attention.skipped.items():
        print(f"skipped row {row}: {reason}", file=sys.stderr)
    empty = index.filter(like="empty_").to_numpy()
    n_empty = int(empty.sum())
    where = (f"by occluding {attention.layer.removeprefix('occlusion ')}" if attention.method == "occlusion"
             else f"at layer {attention.layer!r} ({attention.method})")
    print(f"Wrote the maps of {len(index)} images ({empty.size} maps: {', '.join(attention.which)}) {where} to "
          f"{args.out}" + (f"; {n_empty} of the {empty.size} maps without positive evidence (empty_* in index.csv)"
                           if n_empty else ""), file=sys.stderr)
    if attention.method == "occlusion" and attention.cost:
        per = attention.cost.get("last_seconds_per_image") or attention.cost.get("seconds_per_image")
        grid = attention.cost.get("grid")
        print(f"Occlusion cost: {attention.cost['passes_per_image']} forward passes per image"
              + (f" ({grid}x{grid} cells, {attention.cost.get('grid_choice')})" if grid else "")
              + (f", {per:.3f} s per image computed" if per else "")
              + f"; {seconds:.1f} s in all for {len(rows)} images (model load included; stored maps are read "
              "back for free); bound it with --limit", file=sys.stderr)
    return 0


def _interrupted(checkpoint: Path | None) -> int:
    where = f"best checkpoint kept at {checkpoint}" if checkpoint else "no checkpoint was saved yet"
    print(f"Interrupted: {where}", file=sys.stderr)
    return 130


def cmd_train(args: argparse.Namespace) -> int:
    """``python -m core train``: prints the run id (unless --no-analyze); 130 on Ctrl-C."""
    recipe = recipe_from_args(args)  # bad options fail here, before TensorFlow is imported
    from core.data.datasets import load_dataset
    from core.training import TrainingInterrupted, train_and_analyze

    dataset = load_dataset(args.data)
    print(f"Data: {dataset!r}", file=sys.stderr)
    try:
        result, run = train_and_analyze(
            dataset, recipe, store=RunStore(args.store), run_name=args.name, out_dir=args.out,
            analyze_run=not args.no_analyze, projection=not args.no_projection,
            mixed_precision=args.mixed_precision, corrections=args.corrections)
    except TrainingInterrupted as stop:
        return _interrupted(stop.checkpoint)
    if result.corrections:
        c = result.corrections
        print(f"Corrections {c['file']}: {c['relabelled']:,} relabelled, {c['dropped']:,} dropped",
              file=sys.stderr)
    acc = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    print(f"Trained {result.epochs} epochs in {result.seconds:.1f} s (stopped by {result.stopped_by}); "
          f"test accuracy {acc}; model {result.model_path}", file=sys.stderr)
    if run is not None:
        print(run.id)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``python -m core demo``: prints the run id; 130 on Ctrl-C."""
    if args.time_budget is not None and args.time_budget <= 0:
        raise UserError(f"--time-budget must be positive seconds. Received: {args.time_budget}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1. Received: {args.epochs}")
    from core.demo import run_demo
    from core.training import TrainingInterrupted

    try:
        run = run_demo(store=RunStore(args.store), retrain=args.retrain, time_budget_s=args.time_budget,
                       epochs=args.epochs, out_dir=args.out, export_to=args.export_to,
                       projection=not args.no_projection, background_projection=args.background_projection)
    except TrainingInterrupted as stop:
        return _interrupted(stop.checkpoint)
    t = run.training
    how = "shipped model trained for" if t.get("shipped") else "after"
    print(f"Demo run {run.id!r}: test accuracy {run.accuracy:.4f} ({how} {t['epochs']} epochs, "
          f"{t['seconds']:.1f} s of training)", file=sys.stderr)
    print(run.id)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """``python -m core review ACTION --run RUN ...``; mark and undo print the new verdict's id."""
    from core.review.export import spreadsheet_safe
    from core.review.reviewed import RunReview, write_corrections

    review = RunReview(RunStore(args.store).load(args.run))
    action = args.review_action
    if action == "mark":
        v = review.mark(args.path, args.verdict, label=args.label, note=args.note, reviewer=args.reviewer)
        print(f"Marked {v.path!r} {v.verdict}{' -> ' + v.label if v.label else ''} "
              f"(verdict {v.id}, by {v.reviewer})", file=sys.stderr)
        print(v.id)
    elif action == "undo":
        v = review.undo(args.path, reviewer=args.reviewer)
        now = "no verdict" if v.verdict is None else v.verdict + (f" -> {v.label}" if v.label else "")
        print(f"Undid verdict {v.undoes} on {v.path!r}: now {now} (verdict {v.id})", file=sys.stderr)
        print(v.id)
    elif action == "list":
        if args.history:
            table = review.history(args.path)
        else:
            table = review.verdicts()
            if args.path is not None:
                table = table[table["row"] == review.row(args.path)]
        _write_csv(spreadsheet_safe(table), args.out)
    elif action == "export":
        n = write_corrections(review, args.out)
        print(f"Wrote {n:,} corrections to {args.out}", file=sys.stderr)
    elif action == "manifest":
        counts = review.write_manifest(args.out)
        print(f"Wrote {counts['rows']:,} images to {args.out} ({counts['relabelled']:,} relabelled, "
              f"{counts['excluded']:,} excluded)", file=sys.stderr)
    else:  # metrics
        result = review.reviewed_metrics()
        s = result.summary
        print(f"Accuracy on {s['split']} as reviewed {s['accuracy']:.4f} ({s['n']:,} images; "
              f"{s['relabelled']:,} relabelled, {s['excluded']:,} excluded); as given {s['given_accuracy']:.4f}",
              file=sys.stderr)
        _write_csv(result.per_class, args.out)
    return 0


def _warn_if_data_changed(run) -> None:
    line = run.data_change_line()
    if line:
        print(f"warning: {line}", file=sys.stderr)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """``python -m core diagnose``: one line per diagnosis on stdout; 1 if one was skipped."""
    from core.diagnose import headline, run_diagnoses, stderr_progress, write_findings

    run = RunStore(args.store).load(args.run)
    _warn_if_data_changed(run)
    kinds = tuple(k.strip() for k in args.only.split(",") if k.strip()) if args.only is not None else None
    with stderr_progress(f"diagnose {run.id}") as progress:
        results = run_diagnoses(run, progress=progress, kinds=kinds, force=args.force)
    for name, stored in results.items():
        print(f"{name}: {headline(name, stored.summary)}")
    for name, reason in results.skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if args.out is not None:
        files = write_findings(results, args.out)
        print(f"Wrote {len(files)} files to {args.out}", file=sys.stderr)
    return 1 if results.skipped else 0


def _diagnosis_csv(args: argparse.Namespace, what: str, table_of) -> int:
    """Load the run, compute (or read) one diagnosis with a progress line, write its CSV."""
    from core.diagnose import stderr_progress

    run = RunStore(args.store).load(args.run)
    _warn_if_data_changed(run)
    with stderr_progress(f"{what} {run.id}") as progress:
        table = table_of(run, progress)
    _write_csv(table, args.out)
    return 0


def cmd_label_issues(args: argparse.Namespace) -> int:
    from core.diagnose import label_issues_csv

    return _diagnosis_csv(args, "label issues", lambda run, progress: label_issues_csv(
        run, issues_only=args.issues_only, force=args.force, progress=progress))


def cmd_duplicates(args: argparse.Namespace) -> int:
    from core.diagnose.duplicates import duplicates_csv

    return _diagnosis_csv(args, "duplicates", lambda run, progress: duplicates_csv(
        run, cross_split_only=args.cross_split, force=args.force, progress=progress))


def cmd_causes(args: argparse.Namespace) -> int:
    from core.diagnose import stderr_progress
    from core.diagnose.causes import CSV_COLUMNS, get_causes

    run = RunStore(args.store).load(args.run)
    with stderr_progress(f"causes {run.id}") as progress:
        stored = get_causes(run, force=args.force, progress=progress)
    s = stored.summary
    mix = ", ".join(f"{n:,} {c}" for c, n in s["counts"].items() if n)
    where = f"; neighbours: {s['reference_words']}" if s.get("reference_words") else ""
    print(f"{s['n_errors']:,} errors of '{s['split']}': {mix or 'none'}{where}", file=sys.stderr)
    if s.get("not_assessed_line"):
        print(s["not_assessed_line"], file=sys.stderr)
    _write_csv(stored.table("causes")[CSV_COLUMNS].reset_index(drop=True), args.out)
    return 0


COMMANDS = {"analyze": cmd_analyze, "import": cmd_import, "runs": cmd_runs, "report": cmd_report,
            "compare": cmd_compare, "errors": cmd_errors,
            "delete": cmd_delete, "explain": cmd_explain, "train": cmd_train, "demo": cmd_demo,
            "review": cmd_review, "diagnose": cmd_diagnose, "label-issues": cmd_label_issues,
            "duplicates": cmd_duplicates, "causes": cmd_causes}


def main(argv: list[str] | None = None) -> int:
    """Run one command. A ``UserError`` (and an ``OSError``: a full disk, a read-only folder, a
    missing permission) ends in one line and exit status 2; any other exception is a bug and
    keeps its traceback. ``--debug`` or ``CLASSIFIER_DEBUG=1`` shows the traceback of those too."""
    quiet_start()  # before anything imports TensorFlow: no start-up chatter in the output
    args = build_parser().parse_args(argv)
    debug = args.debug or debug_enabled()
    try:
        RunStore(args.store).sweep()  # leftovers of writers killed earlier (never a live writer's)
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("Interrupted: nothing half-written was kept.", file=sys.stderr)
        return 130
    except (UserError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """A user error's first line; an OSError as 'FILE: reason' (its errno text, not Python's repr)."""
    if isinstance(exc, OSError) and not isinstance(exc, UserError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return first_line(exc)
