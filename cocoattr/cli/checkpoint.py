"""`build-default`, `train` and `push`: making, training and publishing checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cocoattr.cli.arguments import writable_folder
from cocoattr.errors import notice


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


def cmd_push(args: argparse.Namespace) -> int:
    from cocoattr.hub import push_to_hub

    print(push_to_hub(args.checkpoint, args.repo, private=args.private))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`build-default`, `train` and `push`."""
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

    p = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--repo", required=True, help="user/name")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=cmd_push)
