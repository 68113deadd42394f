"""What a training run leaves for a person: history.json, two plots and report.md.

Plots are PNGs drawn with matplotlib's Agg backend (no display needed, works on servers and
in CI); every file goes through `cocoattr.atomic`, so a reader never sees half of one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from cocoattr.atomic import atomic_write, atomic_write_json, atomic_write_text


def write_history(run_dir: str | os.PathLike, history: list[dict]) -> Path:
    """RUN_DIR/history.json: one row per epoch (epoch 0 = the starting model)."""
    path = Path(run_dir) / "history.json"
    return atomic_write_json(path, history)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Train loss and validation mAP per epoch, on two y axes."""
    plt = _plt()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    rows = [h for h in history if h.get("train_loss") is not None]
    ax.plot(
        [h["epoch"] for h in rows],
        [h["train_loss"] for h in rows],
        "o-",
        color="tab:blue",
        label="train loss",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2 = ax.twinx()
    rows = [h for h in history if h.get("val_mAP") is not None]
    ax2.plot(
        [h["epoch"] for h in rows], [h["val_mAP"] for h in rows], "s-", color="tab:orange", label="val mAP"
    )
    ax2.set_ylabel("val mAP", color="tab:orange")
    ax.set_title("training curve (epoch 0 = starting model)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def plot_ap_bars(
    per_attribute: dict[str, dict], path: str | os.PathLike, k: int = 12, title: str = ""
) -> Path:
    """Horizontal bars of the k best and k worst attributes by AP (attributes with a positive only)."""
    plt = _plt()
    path = Path(path)
    aps = sorted(
        ((name, row["ap"]) for name, row in per_attribute.items() if row.get("ap") is not None),
        key=lambda kv: kv[1],
    )
    shown = aps if len(aps) <= 2 * k else aps[:k] + aps[-k:]
    fig, ax = plt.subplots(figsize=(6.4, max(2.0, 0.22 * len(shown) + 1)), dpi=110)
    colours = ["tab:red" if v < 0.5 else "tab:green" for _, v in shown]
    ax.barh(range(len(shown)), [v for _, v in shown], color=colours)
    ax.set_yticks(range(len(shown)), [n for n, _ in shown], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title(title or f"per-attribute AP: bottom and top {k}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return "n/a" if value is None else str(value)


def write_report(run_dir: str | os.PathLike, history: list[dict], result: dict, config: dict) -> Path:
    """RUN_DIR/report.md with the plots, the metrics table, the history and the config."""
    run_dir = Path(run_dir)
    plot_curves(history, run_dir / "curves.png")
    split = "test" if "test" in result.get("eval", {}) else "val"
    plot_ap_bars(result["eval"][split]["per_attribute"], run_dir / "ap_bars.png",
                 title=f"per-attribute AP on {split} (bottom / top)")  # fmt: skip
    keys = (
        "mAP",
        "mean_per_image_auc",
        "macro_f1",
        "micro_f1",
        "CF1",
        "OF1",
        "n_attributes_scored",
        "n_images",
    )
    evals = result.get("eval", {})
    data = config["data"]
    lines = [
        f"# Training report: {run_dir.name}", "",
        f"Data `{data['source']}`: train on {result['n_train']} ({data['train_labels']} labels), "
        f"validate on {result['n_val']}, test on {result['n_test']} ({data['eval_labels']} labels). "
        f"Init `{config['init']}`; best epoch {result['best_epoch']} (by val mAP). "
        "F1 uses per-attribute thresholds tuned on val.", "",
        "![training curve](curves.png)", "",
        "| metric | " + " | ".join(evals) + " |",
        "|---|" + "---|" * len(evals),
    ]  # fmt: skip
    lines += [f"| {k} | " + " | ".join(_cell(evals[s].get(k)) for s in evals) + " |" for k in keys]
    types = sorted({t for s in evals for t in evals[s].get("mAP_by_type", {})})
    lines += [f"| mAP {t} | " + " | ".join(_cell(evals[s]["mAP_by_type"].get(t)) for s in evals) + " |"
              for t in types]  # fmt: skip
    start = result.get("start") or {}
    if start:
        lines += ["", "The starting model (epoch 0, before any training) on the same images: "
                  + ", ".join(f"{k} {_cell(v)}" for k, v in start.items()) + "."]  # fmt: skip
    lines += ["", "![per-attribute AP](ap_bars.png)", "", "## History", ""]
    lines += ["| epoch | train loss | val mAP | val AUC | lr | seconds |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {h['epoch']} | {_cell(h.get('train_loss'))} | {_cell(h.get('val_mAP'))} "
        f"| {_cell(h.get('val_auc'))} | {h.get('lr', 0):.2e} | {h.get('seconds', 0)} |"
        for h in history
    ]
    lines += ["", "## Config", "", "```yaml", _yaml(config).rstrip(), "```", ""]
    path = run_dir / "report.md"
    return atomic_write_text(path, "\n".join(lines))


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
