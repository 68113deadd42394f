"""`predict` and `evaluate`: a checkpoint's answers for images, and its scores on labelled ones."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cocoattr.cli.arguments import add_checkpoint, add_device, probability, save_every_from_env, writable_file
from cocoattr.errors import UserError, notice


def _with_objects(predictor, paths: list[str], min_score: float):
    """(path, prediction with objects or the error that skipped it), one image at a time."""
    for path in paths:
        try:
            yield str(path), predictor.predict_objects([path], score_threshold=min_score)[0]
        except UserError as e:
            yield str(path), e


def _print_prediction(path: str, probs: dict[str, float], objects: list[dict] | None, top_k: int,
                      min_score: float) -> None:  # fmt: skip
    """The table view of one image: its top-k rows, then (with --objects) one line per object."""
    from cocoattr.predictor import object_label

    print(path)
    for name, p in sorted(probs.items(), key=lambda kv: -kv[1])[:top_k]:
        print(f"  {name:<18} {p:6.3f}  {'#' * round(p * 30)}")
    if objects == []:
        print(f"  (no objects above {min_score:.2f})")
    for o in objects or []:
        box = ",".join(str(round(v)) for v in o["box"])
        top = ", ".join(f"{n} {p:.2f}" for n, p in list(o["attributes"].items())[:5])
        print(f"  [{object_label(o['category'], o['detector_category'], o['score'])}]  box {box}  {top}")


def _image_paths(inputs: list[str]) -> tuple[list[str], list[str]]:
    """(files to predict, in the order given; folders with no image). A folder stands for every
    image under it (recursive, sorted, as `index build --images` walks it)."""
    from cocoattr.images import list_images

    paths, empty = [], []
    for item in inputs:
        if not Path(item).is_dir():
            paths.append(item)  # a file, or a bad path the predictor reports in turn
        elif found := list_images(item):
            paths += [str(p) for p in found]
        else:
            empty.append(item)
    return paths, empty


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cocoattr.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=args.batch_size, device=args.device)
    if args.objects and not predictor.has_detector:
        raise UserError("this checkpoint has no object detector; --objects needs one (the default has it)")
    names = predictor.attributes
    results, failed = [], 0
    paths, empty = _image_paths(args.images)
    for folder in empty:
        failed += 1
        print(f"cocoattr: skipped {folder}: a folder with no images in it", file=sys.stderr)
    if args.objects:
        found = _with_objects(predictor, paths, args.min_score)
    else:
        found = predictor.predict_files(paths)
    # JSON comes at the end, so a long run shows a bar meanwhile; the table is its own progress
    bar = tqdm(total=len(paths), unit="img", desc="predicting", file=sys.stderr, leave=False,
               disable=not args.json or len(paths) < 2)  # fmt: skip
    for path, result in found:
        bar.update(1)
        if isinstance(result, UserError):
            failed += 1
            bar.write(f"cocoattr: skipped {result}", file=sys.stderr)
            continue
        probs = {n: round(float(p), 5) for n, p in zip(names, result.probs, strict=True)}
        record = {"image": path, "attributes": probs}
        if args.objects:  # --top-k attributes per object in the JSON, the top 5 in the table
            record["objects"] = [
                o.to_json(names, args.top_k if args.json else 5) for o in result.objects or []
            ]
        if not args.json:
            _print_prediction(path, probs, record.get("objects"), args.top_k, args.min_score)
        results.append(record)
    bar.close()
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    if failed:
        print(f"cocoattr: {failed} of {failed + len(results)} images failed", file=sys.stderr)
        return 1
    return 0


GALLERY_SPLITS = ("all", "train", "val", "test")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text})")
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cocoattr.atomic import atomic_write_json

    out = writable_file(args.out) if args.out else None
    if args.objects:
        result = _evaluate_objects(args)
    elif args.coco_attributes is not None:
        raise UserError("--coco-attributes PKL goes with --objects")
    elif args.heatmaps:
        result = _evaluate_heatmaps(args)
    elif args.coco is not None:
        result = _evaluate_coco(args)
    else:
        from cocoattr.evaluation import evaluate_checkpoint, format_table

        if args.coconut or args.json or args.limit is not None:
            raise UserError("--coconut, --json and --limit go with --heatmaps or --objects")
        if args.index is not None:
            raise UserError("--index goes with --coco ROOT (the split's index)")
        split = args.split or "all"
        if split not in GALLERY_SPLITS:
            raise UserError(
                f"--split {split!r}: expected one of {', '.join(GALLERY_SPLITS)} (or give --coco ROOT)"
            )
        result = evaluate_checkpoint(args.checkpoint, args.data, split, args.baseline, device=args.device)
        print(format_table(result))
    if out is not None:
        atomic_write_json(out, result)
    return 0


def _evaluate_heatmaps(args: argparse.Namespace) -> dict:
    """`evaluate --heatmaps`: where the maps point, on a COCO root's instances or the gallery's boxes."""
    from cocoattr.evaluation import evaluate_heatmaps
    from cocoattr.faithfulness import format_summary

    if args.baseline:
        raise UserError("--baseline does not apply to --heatmaps (the centre Gaussian is its baseline)")
    if args.coco is not None and args.data != "gallery":
        raise UserError("--heatmaps reads the boxes of --data or the masks of --coco ROOT, not both")
    if args.coco is None and args.split is not None:
        raise UserError("--split goes with --coco ROOT for --heatmaps (the gallery's boxes are scored whole)")
    if args.coconut is not None and (args.coco is None or args.split is not None):
        raise UserError(
            "--coconut FOLDER takes its photos from --coco ROOT (holding val2017/), with no --split"
        )
    result = evaluate_heatmaps(args.checkpoint, args.coco, args.split or "val2017", args.limit,
                               device=args.device, data=args.data, coconut=args.coconut)  # fmt: skip
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(format_summary(result))
    return result


def _evaluate_objects(args: argparse.Namespace) -> dict:
    """`evaluate --objects`: per-object attributes against COCONut's objects or COCO Attributes' patches."""
    from cocoattr.object_evaluation import evaluate_objects, format_objects_table

    for given, flag in ((args.heatmaps, "--heatmaps"), (args.baseline, "--baseline"), (args.index, "--index"),
                        (args.split, "--split"), (args.data != "gallery", "--data")):  # fmt: skip
        if given:
            raise UserError(f"{flag} does not go with --objects (which reads --coconut FOLDER or "
                            "--coco-attributes PKL, photos from --coco ROOT)")  # fmt: skip
    result = evaluate_objects(args.checkpoint, args.coco, coconut=args.coconut, coco_attributes=args.coco_attributes,
                              limit=args.limit, device=args.device)  # fmt: skip
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(format_objects_table(result))
    return result


def _evaluate_coco(args: argparse.Namespace) -> dict:
    """`evaluate --coco ROOT --split val2017`: build (or update) the split's index, then score the
    category attributes against the instance annotations."""
    from cocoattr.coco_index import build_coco_index, split_files
    from cocoattr.evaluation import coco_category_retrieval, format_coco_table
    from cocoattr.index import default_index_path, image_set

    if args.baseline:
        raise UserError("--baseline: only for the hand-labelled gallery, not with --coco")
    if args.coconut or args.json or args.limit is not None:
        raise UserError(
            "--coconut, --json and --limit go with --heatmaps (use --out FILE for the metrics as JSON)"
        )
    split = args.split or "val2017"
    _, _, image_dir = split_files(args.coco, split)
    path = writable_file(args.index) if args.index else default_index_path(image_set(image_dir))
    notice(f"COCO {split}: the index is kept at {path} (built or updated first)")
    report, _ = build_coco_index(args.coco, split, path, checkpoint=args.checkpoint,
                                 save_every=save_every_from_env(), device=args.device)  # fmt: skip
    index = report.index
    result = coco_category_retrieval(index.probs, index.attributes, [r["categories"] for r in index.records])
    result = {"checkpoint": index.checkpoint.get("source"), "checkpoint_sha256": index.checkpoint.get("sha256"),
              "data": "coco", "split": split, "index": str(path), **result}  # fmt: skip
    print(format_coco_table(result))
    return result


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`predict` and `evaluate`."""
    p = sub.add_parser("predict", help="attribute probabilities for images")
    add_checkpoint(p)
    p.add_argument("images", nargs="+", help="image files, or folders (every image under one)")
    p.add_argument("--top-k", type=int, default=10, help="rows per image in the table (default 10)")
    p.add_argument("--json", action="store_true", help="print every attribute's probability as JSON")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--objects", action="store_true",
                   help="also detect objects (COCO-80) and give each one's box and top-k attributes")  # fmt: skip
    p.add_argument("--min-score", type=probability, default=0.35,
                   help="with --objects: the detector score an object needs (default 0.35)")  # fmt: skip
    add_device(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="masked mAP, per-image AUC, F1 on a labelled image set; --coco: "
                       "precision@10 / mAP of the COCO category attributes against the instance annotations; "
                       "--heatmaps: whether the attribute maps point where the attribute is")  # fmt: skip
    add_checkpoint(p)
    p.add_argument("--data", default="gallery", help="'gallery' (bundled) or a folder in the gallery layout "
                   "(with --heatmaps: and a boxes.json)")  # fmt: skip
    p.add_argument("--split", default=None,
                   help="all (default), train, val or test of --data; with --coco: val2017 (default), train2017, "
                   "val2014, train2014")  # fmt: skip
    p.add_argument("--heatmaps", action="store_true",
                   help="heatmap faithfulness: mass in mask and pointing game vs a centre Gaussian, on the "
                   "hand-drawn boxes of --data (gallery/boxes.json) or, with --coco, a COCO root's instance masks")  # fmt: skip
    p.add_argument("--objects", action="store_true",
                   help="per-object attributes (the head restricted to each object's box and mask, beside the "
                   "whole image) against --coconut FOLDER's thing segments or --coco-attributes PKL's patches, "
                   "photos from --coco ROOT: per-object mAP, AUC, precision@1/5")  # fmt: skip
    p.add_argument("--coconut", default=None, metavar="FOLDER",
                   help="with --heatmaps or --objects and --coco ROOT: score against the panoptic segments of a "
                   "downloaded COCONut repo (e.g. ROOT/coconut/relabeled_coco_val), photos from --coco")  # fmt: skip
    p.add_argument("--coco-attributes", default=None, metavar="PKL",
                   help="with --objects and --coco ROOT (holding the 2014 instances and images): score against "
                   "a COCO Attributes pickle's per-object labels")  # fmt: skip
    p.add_argument("--coco", default=None, metavar="ROOT",
                   help="a COCO root (the --root of `data download`): retrieval of the category attributes on "
                   "--split against its instance annotations (with --heatmaps: its instance masks)")  # fmt: skip
    p.add_argument("--index", default=None, help="with --coco: the split's index file, built or updated "
                   "first (default: one under checkpoints/ per split folder)")  # fmt: skip
    p.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="with --heatmaps or --objects: score the first N images",
    )
    p.add_argument(
        "--json", action="store_true", help="with --heatmaps or --objects: print the summary as JSON"
    )
    p.add_argument(
        "--baseline", action="store_true", help="also score the class-posterior-averaging baseline"
    )
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    add_device(p)
    p.set_defaults(func=cmd_evaluate)
