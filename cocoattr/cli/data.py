"""`data download` and `data mine`: the datasets and the weak labels mined from captions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cocoattr.cli.arguments import writable_file
from cocoattr.errors import UserError


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


def cmd_data_coconut_coverage(args: argparse.Namespace) -> int:
    from cocoattr.atomic import atomic_write_text
    from cocoattr.data.coconut import coverage

    table = coverage()
    if args.out:
        out = writable_file(args.out)
        try:
            atomic_write_text(out, table)
        except OSError as e:
            raise UserError(f"{out}: cannot write the table ({e.strerror or e})") from None
        print(f"wrote {out}")
    else:
        print(table, end="")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`data download`, `data mine` and `data coconut-coverage`."""
    p = sub.add_parser("data", help="datasets: download, mine weak labels")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download COCO / COCO Attributes / COCONut files")
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
    c = dsub.add_parser("coconut-coverage", help="which COCO panoptic categories give which attributes")
    c.add_argument(
        "--out", default=None, type=Path, help="write the markdown table here instead of printing it"
    )
    c.set_defaults(func=cmd_data_coconut_coverage)
