"""`index build|merge|push|recall` and `search`: retrieval over a set of images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cocoattr.cli.arguments import add_checkpoint, add_device, save_every_from_env, writable_file
from cocoattr.errors import UserError, notice


def cmd_index(args: argparse.Namespace) -> int:
    """`cocoattr index build`: exit 0, or 1 if some images could not be read (the index is still written).

    With `--shard I/N` (or under torchrun: RANK/WORLD_SIZE) this process builds one shard into
    OUT.shard-I-of-N.npz; `index merge` joins the parts."""
    from cocoattr.index import build_index  # numpy + the gallery: ~250 ms
    from cocoattr.index_shards import (
        parse_shard,
        part_path,
        parts_pattern,
        rank_device,
        selector,
        shard_from_env,
    )

    if (args.images is None) == (args.coco is None):
        raise UserError(
            "index build: give --images FOLDER or --coco ROOT (with --split), not both or neither"
        )
    shard = parse_shard(args.shard) if args.shard is not None else shard_from_env()
    device = args.device if args.shard is not None or shard is None else rank_device(args.device)
    final = writable_file(args.out)
    out = final if shard is None else part_path(final, shard)
    select = None if shard is None else selector(shard)
    extra = {} if shard is None else {"shard": list(shard)}
    if args.coco is not None:
        from cocoattr.coco_index import build_coco_index

        report, missing = build_coco_index(args.coco, args.split, out, checkpoint=args.checkpoint,
                                           batch_size=args.batch_size, save_every=save_every_from_env(),
                                           device=device, select=select, extra_info=extra)  # fmt: skip
        if missing:
            notice(f"{missing} images of {args.split} listed in the annotations are not on disk; left out")
    else:
        report = build_index(args.images, out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                             save_every=save_every_from_env(), device=device, select=select,
                             info=extra or None)  # fmt: skip
    if report.full_rebuild and report.reason != "new index":
        notice(f"full rebuild: {report.reason}")
    where = out if shard is None else f"{out} (shard {shard[0]}/{shard[1]})"
    notice(
        f"indexed {len(report.index)} images into {where}: {len(report.computed)} computed, "
        f"{report.reused} unchanged, {len(report.removed)} removed, {len(report.failed)} failed"
    )
    if shard is not None:
        notice(
            f"when every shard is built: cocoattr index merge {parts_pattern(final, shard[1])} --out {final}"
        )
    if report.failed:
        notice(f"{len(report.failed)} images could not be read and are not in the index")
        return 1
    return 0


def cmd_index_merge(args: argparse.Namespace) -> int:
    """`cocoattr index merge PARTS --out FILE`: one index from the parts of a sharded build."""
    from cocoattr.index import Index
    from cocoattr.index_shards import merge_parts

    out = writable_file(args.out)
    if out.resolve() in {Path(p).expanduser().resolve() for p in args.parts}:
        raise UserError(f"index merge: --out {out} is one of the parts; give a new file")
    if out.exists():
        Index.load(out)  # a file that is not an index is an error, never overwritten
    merged = merge_parts(args.parts)
    merged.save(out)
    notice(f"merged {len(args.parts)} parts into {out}: {len(merged)} images")
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
    if args.images not in (None, GALLERY) and not Path(args.images).expanduser().is_dir():
        raise UserError(f"--images {args.images}: no such folder")
    gallery = default_index_path(GALLERY)
    index = open_index(args.index or gallery, fallback=lambda: Index.load(gallery), images=args.images)
    if not index.complete:
        notice("this index is incomplete (an interrupted build); run `index build` again to finish it")
    text, image = " ".join(args.query), _image_query(args.query)
    if image is not None:
        notice(f"query by image: nearest neighbours of {text}")
    results = find(index, "" if image is not None else text, image=image, k=args.top_k)  # a path: no terms
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`index build|merge|push|recall` and `search`."""
    p = sub.add_parser("index", help="retrieval index over a set of images")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="build or update an index")
    add_checkpoint(b)
    b.add_argument("--images", default=None, help="folder of images, or 'gallery'")
    b.add_argument("--coco", default=None, help="COCO root (the --root of `data download`): index a split "
                   "with its captions, categories and thumbnails")  # fmt: skip
    b.add_argument(
        "--split", default="val2017", help="with --coco: val2017 (default), train2017, val2014, train2014"
    )
    b.add_argument("--out", required=True, help="index file to write")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--shard", default=None, metavar="I/N", help="build only shard I of N (0 <= I < N) "
                   "into OUT.shard-I-of-N.npz, resumable; under torchrun RANK/WORLD_SIZE give it; "
                   "then `index merge`")  # fmt: skip
    add_device(b)
    b.set_defaults(func=cmd_index)
    m = isub.add_parser("merge", help="join the parts of a sharded build (--shard I/N) into one index")
    m.add_argument("parts", nargs="+", help="the part files, OUT.shard-I-of-N.npz, one per shard")
    m.add_argument("--out", required=True, help="index file to write")
    m.set_defaults(func=cmd_index_merge)
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
    p.add_argument("--images", default=None, metavar="FOLDER", help="the folder the index's images are in: "
                   "hits are shown as files there (default: the bundled gallery for a gallery index, "
                   "else paths relative to the indexed folder; never a folder the index file names)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=10, help="hits to show (default 10)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("query", nargs="+", help="e.g. 'red, furry, -indoor' or 'striped^2 animal' or free text")
    p.set_defaults(func=cmd_search)
