"""`python -m cocoattr ...`: one argparse entry, one subcommand per job.

Handlers import their modules lazily so `--help` is instant. A `UserError` anywhere becomes
one line on stderr and exit code 2; Ctrl-C exits 130 after whatever was finished is saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cocoattr.allocator import tune_malloc
from cocoattr.errors import UserError, notice


def _check_writable(path: Path, start: Path) -> Path:
    """`start` or its nearest existing ancestor must be a folder we can write in."""
    parent = start
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write in {parent} (permission denied)")
    return path


def writable_file(path: str | Path) -> Path:
    """An output file path checked before any work starts: not a folder, and its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name to write")
    return _check_writable(path, path.parent)


def writable_folder(path: str | Path) -> Path:
    """An output folder checked before any work starts: not a file, and writable (or creatable)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; give a folder to write the run into")
    return _check_writable(path, path)


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint folder, Hub id (user/name) or 'default'; env COCOATTR_CHECKPOINT; "
        "else the Hub default, falling back to the embedded zero-shot default offline",
    )


def probability(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {text})")
    return value


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
    print(path)
    for name, p in sorted(probs.items(), key=lambda kv: -kv[1])[:top_k]:
        print(f"  {name:<18} {p:6.3f}  {'#' * round(p * 30)}")
    if objects == []:
        print(f"  (no objects above {min_score:.2f})")
    for o in objects or []:
        box = ",".join(str(round(v)) for v in o["box"])
        top = ", ".join(f"{n} {p:.2f}" for n, p in list(o["attributes"].items())[:5])
        print(f"  [{o['category']} {o['score']:.2f}]  box {box}  {top}")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu",
                   help="'cpu' (onnxruntime, the default) or 'cuda' / 'cuda:N' (PyTorch)")  # fmt: skip


def cmd_predict(args: argparse.Namespace) -> int:
    from cocoattr.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=args.batch_size, device=args.device)
    if args.objects and not predictor.has_detector:
        raise UserError("this checkpoint has no object detector; --objects needs one (the default has it)")
    names = predictor.attributes
    results, failed = [], 0
    if args.objects:
        found = _with_objects(predictor, args.images, args.min_score)
    else:
        found = predictor.predict_files(args.images)
    for path, result in found:
        if isinstance(result, UserError):
            failed += 1
            print(f"cocoattr: skipped {result}", file=sys.stderr)
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
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    if failed:
        print(f"cocoattr: {failed} of {failed + len(results)} images failed", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cocoattr.atomic import atomic_write_json
    from cocoattr.evaluation import evaluate_checkpoint, format_table

    out = writable_file(args.out) if args.out else None
    result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.baseline, device=args.device)
    print(format_table(result))
    if out is not None:
        atomic_write_json(out, result)
    return 0


def cmd_build_default(args: argparse.Namespace) -> int:
    from cocoattr.checkpoints import DEFAULT_DIR
    from cocoattr.evaluation import gallery_metrics
    from cocoattr.zeroshot import RECIPE_NAME, build_default, recipe_hash

    stamp = DEFAULT_DIR / RECIPE_NAME
    current = stamp.is_file() and stamp.read_text().strip() == recipe_hash()
    if args.out is None and args.backbone == "mobilenet_v2" and not args.force and current:
        notice(f"embedded default ready in {DEFAULT_DIR}")
        return 0
    out = Path(args.out or DEFAULT_DIR)
    if args.out is None:
        notice(f"building the embedded zero-shot default into {out}")
    out = build_default(out, backbone=args.backbone, measure=gallery_metrics)
    notice(f"wrote {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cocoattr.training.config import load_config
    from cocoattr.training.loop import fit

    cfg = load_config(args.config)
    out = writable_folder(args.out)
    result = fit(cfg, out, resume=args.resume)
    if result:
        keys = ("best_epoch", "val_mAP", "val_auc", "test_mAP", "test_auc")
        shown = [(k, result[k]) for k in keys if result.get(k) is not None]
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown))
        print(f"cocoattr: wrote {out / 'checkpoint'} and {out / 'report.md'}", file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """`cocoattr index build`: exit 0, or 1 if some images could not be read (the index is still written)."""
    from cocoattr.index import build_index, save_every_from_env  # numpy + the gallery: ~250 ms

    if (args.images is None) == (args.coco is None):
        raise UserError(
            "index build: give --images FOLDER or --coco ROOT (with --split), not both or neither"
        )
    writable_file(args.out)
    if args.coco is not None:
        from cocoattr.coco_index import build_coco_index

        report, missing = build_coco_index(args.coco, args.split, args.out, checkpoint=args.checkpoint,
                                           batch_size=args.batch_size, save_every=save_every_from_env(),
                                           device=args.device)  # fmt: skip
        if missing:
            notice(f"{missing} images of {args.split} listed in the annotations are not on disk; left out")
    else:
        report = build_index(args.images, args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                             save_every=save_every_from_env(), device=args.device)  # fmt: skip
    if report.full_rebuild and report.reason != "new index":
        notice(f"full rebuild: {report.reason}")
    notice(
        f"indexed {len(report.index)} images into {args.out}: {len(report.computed)} computed, "
        f"{report.reused} unchanged, {len(report.removed)} removed, {len(report.failed)} failed"
    )
    if report.failed:
        notice(f"{len(report.failed)} images could not be read and are not in the index")
        return 1
    return 0


def cmd_index_push(args: argparse.Namespace) -> int:
    """`cocoattr index push`: the index as a Hub dataset repo (parquet shards + card); prints the commit."""
    from cocoattr.index_hub import push_index

    print(push_index(args.index, args.repo, private=args.private))
    return 0


def cmd_index_recall(args: argparse.Namespace) -> int:
    """`cocoattr index recall`: Recall@K of attribute search on the hand-labelled gallery."""
    from cocoattr.search import gallery_recall  # numpy + the gallery: ~250 ms

    result = gallery_recall(args.checkpoint, args.index)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    r = result
    print(
        f"gallery attribute-search Recall@K ({r['n_images']} images, checkpoint {r['checkpoint']['source']})"
    )
    print(f"{'query':<22} {'rel':>4} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
    for row in r["queries"]:
        print(
            f"{row['query']:<22} {row['relevant']:>4} {row['R@1']:6.3f} {row['R@5']:6.3f} {row['R@10']:6.3f}"
        )
    print(f"{'mean':<22} {'':>4} {r['R@1']:6.3f} {r['R@5']:6.3f} {r['R@10']:6.3f}")
    print(f"hit@1 {r['hit@1']:.3f}  hit@5 {r['hit@5']:.3f}  hit@10 {r['hit@10']:.3f}")
    return 0


def _quiet_transformers() -> None:
    """The MiniLM load bar would interleave with the query interpretation on stderr."""
    try:
        from transformers.utils import logging as hf_logging  # optional and heavy: only when searching
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def _image_query(words: list[str]) -> Path | None:
    """The query photo when the whole query is one existing image file, else None. A query that
    is a folder, or that looks like an image path that does not exist, is an error, not words."""
    from cocoattr.images import IMAGE_SUFFIXES  # numpy + PIL: ~170 ms

    if len(words) != 1 or not words[0].strip() or len(words[0]) > 1024:
        return None  # empty, or too long for a path: words for the query parser to judge
    p = Path(words[0]).expanduser()
    if p.is_dir():
        raise UserError(f"{p}: is a folder; search by one image file, or give attribute words")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        if not p.is_file():
            raise UserError(f"{p}: no such image file")
        return p
    return None


def cmd_search(args: argparse.Namespace) -> int:
    """`cocoattr search`: a table (or --json list) of hits best first; the interpretation goes to stderr."""
    from cocoattr.index import GALLERY, Index, default_index_path  # numpy + the gallery: ~250 ms
    from cocoattr.index_hub import open_index
    from cocoattr.search import find

    _quiet_transformers()
    gallery = default_index_path(GALLERY)
    index = open_index(args.index or gallery, fallback=lambda: Index.load(gallery))
    if not index.complete:
        notice("this index is incomplete (an interrupted build); run `index build` again to finish it")
    text, image = " ".join(args.query), _image_query(args.query)
    if image is not None:
        notice(f"query by image: nearest neighbours of {text}")
    results = find(index, text, image=image, k=args.top_k)
    if results.query is not None:
        notice(results.query.describe())
        for w in results.query.warnings:
            notice(f"warning: {w}")
    if args.json:
        json.dump([h.to_json() for h in results.hits], sys.stdout, indent=1)
        print()
        return 0
    if not results.hits:
        print("(the index is empty)" if len(index) == 0 else "(no results)")
    else:
        print(f"{'rank':>4}  {'score':>9}  image  (top attributes)")
    for rank, h in enumerate(results.hits, 1):
        why = "  ".join(f"{name} {p:.2f}" for name, p in h.attributes.items())
        print(f"{rank:>4}  {h.score:9.3f}  {h.image}  {why}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from cocoattr.data.download import download_all

    return download_all(list(args.names), args.root, args.base_url)


def cmd_data_mine(args: argparse.Namespace) -> int:
    from cocoattr.atomic import atomic_write_text
    from cocoattr.data.captions import CaptionMiner, format_report, miner_report
    from cocoattr.data.coco import captions_by_image, load_coco
    from cocoattr.data.gallery import read_hand_labels
    from cocoattr.vocab import load_vocabulary

    out = writable_file(args.out) if args.out else None
    vocab = load_vocabulary()
    captions = captions_by_image(load_coco(Path(args.captions), "captions"))
    hand = read_hand_labels(Path(args.labels), vocab) if args.labels else None
    report = miner_report(captions, hand, miner=CaptionMiner(vocab, min_votes=args.min_votes or 1))
    print(format_report(report))
    if out is not None:
        try:
            atomic_write_text(out, json.dumps(report, indent=1) + "\n")
        except OSError as e:
            raise UserError(f"{out}: cannot write the report ({e.strerror or e})") from None
        print(f"wrote {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from cocoattr.hub import push_to_hub

    print(push_to_hub(args.checkpoint, args.repo, private=args.private))
    return 0


def _add_index_commands(sub: argparse._SubParsersAction) -> None:
    """`index build`, `index recall` and `search`."""
    p = sub.add_parser("index", help="retrieval index over a set of images")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="build or update an index")
    _add_checkpoint(b)
    b.add_argument("--images", default=None, help="folder of images, or 'gallery'")
    b.add_argument("--coco", default=None, help="COCO root (the --root of `data download`): index a split "
                   "with its captions, categories and thumbnails")  # fmt: skip
    b.add_argument(
        "--split", default="val2017", help="with --coco: val2017 (default), train2017, val2014, train2014"
    )
    b.add_argument("--out", required=True, help="index file to write")
    b.add_argument("--batch-size", type=int, default=16)
    _add_device(b)
    b.set_defaults(func=cmd_index)
    u = isub.add_parser("push", help="publish an index as a Hugging Face dataset repo (parquet + card)")
    u.add_argument("--index", required=True, help="index file (from `index build`)")
    u.add_argument("--repo", required=True, help="USER/NAME of the dataset repo")
    u.add_argument("--private", action="store_true")
    u.set_defaults(func=cmd_index_push)
    r = isub.add_parser("recall", help="Recall@K of attribute search on the hand-labelled gallery")
    r.add_argument(
        "--checkpoint", default="default", help="checkpoint to index the gallery with (default: 'default')"
    )
    r.add_argument("--index", default=None, help="use this gallery index instead of building a temporary one")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_index_recall)

    p = sub.add_parser("search", help="search an index with an attribute query")
    p.add_argument("--index", default=None, help="index file or hf://datasets/USER/NAME "
                   "(default: the bundled gallery's, which `make demo` builds)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=10, help="hits to show (default 10)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("query", nargs="+", help="e.g. 'red, furry, -indoor' or 'striped^2 animal' or free text")
    p.set_defaults(func=cmd_search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocoattr", description="Visual attributes: predict, search, train."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="attribute probabilities for images")
    _add_checkpoint(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=10, help="rows per image in the table (default 10)")
    p.add_argument("--json", action="store_true", help="print every attribute's probability as JSON")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--objects", action="store_true",
                   help="also detect objects (COCO-80) and give each one's box and top-k attributes")  # fmt: skip
    p.add_argument("--min-score", type=probability, default=0.35,
                   help="with --objects: the detector score an object needs (default 0.35)")  # fmt: skip
    _add_device(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="masked mAP, per-image AUC, F1 on a labelled image set")
    _add_checkpoint(p)
    p.add_argument("--data", default="gallery", help="'gallery' (bundled) or a folder in the gallery layout")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    p.add_argument(
        "--baseline", action="store_true", help="also score the class-posterior-averaging baseline"
    )
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    _add_device(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("build-default", help="build the embedded zero-shot default checkpoint")
    p.add_argument("--out", default=None, help="folder (default: checkpoints/default)")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_default)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="run folder (history.json, plots, report.md, checkpoint)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from RUN_DIR/last if present (default: yes)")  # fmt: skip
    p.set_defaults(func=cmd_train)

    _add_index_commands(sub)

    p = sub.add_parser("data", help="datasets: download, mine weak labels")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download COCO / COCO Attributes files")
    from cocoattr.data.resources import RESOURCES  # stdlib only: --help stays quick

    d.add_argument("names", nargs="+", metavar="NAME", help="one or more of: " + ", ".join(RESOURCES))
    d.add_argument("--root", required=True, type=Path)
    d.add_argument("--base-url", default=None, help="mirror to use instead of the official hosts")
    d.set_defaults(func=cmd_data_download)
    m = dsub.add_parser("mine", help="mine attribute labels from COCO captions")
    m.add_argument("--captions", required=True, type=Path)
    m.add_argument("--labels", default=None, type=Path, help="hand labels (attributes.json) to score against")
    m.add_argument("--out", default=None, type=Path)
    m.add_argument(
        "--min-votes", type=int, default=1, help="captions that must mention an attribute (default 1)"
    )
    m.set_defaults(func=cmd_data_mine)

    p = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--repo", required=True, help="user/name")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=cmd_push)
    return parser


def _query_words_not_flags(argv: list[str]) -> list[str]:
    """`search furry -indoor --top-k 3`: an exclude looks like a flag to argparse. Move search's
    own options first and the query words, in order, after `--`, wherever they were typed."""
    if not argv or argv[0] != "search" or "--" in argv:
        return argv
    options, takes_value = {"-h", "--help", "--json", "--index", "--top-k"}, {"--index", "--top-k"}
    flags, words, i = [], [], 1
    while i < len(argv):
        word = argv[i]
        if word.split("=", 1)[0] in options:
            flags.append(word)
            if word in takes_value and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        else:
            words.append(word)
        i += 1
    return [argv[0], *flags, "--", *words] if words else [argv[0], *flags]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_query_words_not_flags(argv))
    tune_malloc()  # before any decode or model thread exists
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"cocoattr: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cocoattr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
