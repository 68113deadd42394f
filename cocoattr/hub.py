"""Checkpoints in the Hugging Face Hub layout: config.json + model.safetensors + README.md.

`resolve_checkpoint` turns what a user typed (nothing, a folder, a Hub id, "default")
into a local folder; `load_model` builds the model from it strictly, so a truncated file
or a config that disagrees with its tensors is a clear error, never a half-loaded model.
No pickles: weights are safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cocoattr.errors import UserError, notice

if TYPE_CHECKING:
    from cocoattr.model import AttributeModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# The Hub repo the app and CLI try first; offline they fall back to the embedded default.
DEFAULT_HUB_ID = "cocoattr/cocoattr-mobilenetv2-zeroshot"
ENV_CHECKPOINT = "COCOATTR_CHECKPOINT"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "checkpoints" / "default"
CONFIG_KEYS = {
    "attributes", "attribute_types", "backbone", "concepts", "colour", "concept_temperature", "image_size", "dim", "heads",
    "embed_dim", "temperature", "dropout", "kind", "description",
}  # fmt: skip


def resolve_checkpoint(source: str | os.PathLike | None = None) -> Path:
    """Local folder for `source`: a folder, a Hub id, 'default', or None (env, then the Hub default)."""
    implicit = source is None and not os.environ.get(ENV_CHECKPOINT)
    source = str(source or os.environ.get(ENV_CHECKPOINT) or DEFAULT_HUB_ID)
    if source == "default":
        return ensure_default()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.suffix or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(f"checkpoint {source!r}: no such folder, and not a Hub id of the form user/name")
    try:
        return download(source)
    except UserError as e:
        if not implicit:
            raise
        notice(f"{e}; using the embedded zero-shot default instead")
        return ensure_default()


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch a checkpoint from the Hub (or HF_ENDPOINT) into the HF cache; offline: cache only."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
        )
    except RepositoryNotFoundError:
        raise UserError(f"Hub checkpoint {repo_id!r} not found (or private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise UserError(f"Hub checkpoint {repo_id!r} is not cached and the Hub cannot be reached") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(f"could not download Hub checkpoint {repo_id!r} ({type(e).__name__})") from None
    path = Path(folder)
    if not (path / WEIGHTS_NAME).is_file():
        raise UserError(f"Hub checkpoint {repo_id!r} has no {WEIGHTS_NAME}")
    return path


def default_recipe_hash() -> str:
    """Hash of the files that define the embedded default: a change means a rebuild. The
    predictor is among them because the card's gallery metrics are measured through it."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for name in ("zeroshot.py", "model.py", "backbones.py", "predictor.py", "vocab/attributes.json"):
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_default() -> Path:
    """The embedded zero-shot default, built on first use (under a minute on a laptop CPU)
    and rebuilt when the code or vocabulary that defines it has changed."""
    stamp = DEFAULT_DIR / "recipe.txt"
    recipe = default_recipe_hash()
    current = (
        (DEFAULT_DIR / WEIGHTS_NAME).is_file() and stamp.is_file() and stamp.read_text().strip() == recipe
    )
    if not current:
        from cocoattr.zeroshot import build_default

        notice(f"building the embedded zero-shot default into {DEFAULT_DIR}")
        build_default(DEFAULT_DIR)
    return DEFAULT_DIR


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{path}: missing (a checkpoint folder needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object")
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown config keys {unknown}")
    for key in ("attributes", "attribute_types"):
        if not isinstance(config.get(key), list) or not config[key]:
            raise UserError(f"{path}: {key!r} must be a non-empty list")
    return config


def load_model(source: str | os.PathLike | None = None, **overrides) -> AttributeModel:
    """Build an AttributeModel from a checkpoint and load its weights strictly, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from cocoattr.model import AttributeModel

    folder = resolve_checkpoint(source) if not isinstance(source, Path) else source
    config = read_config(folder)
    config.update({k: v for k, v in overrides.items() if k in CONFIG_KEYS})
    try:
        model = AttributeModel(**config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{folder / CONFIG_NAME}: invalid config ({e})") from None
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"{weights}: missing")
    try:
        data = weights.read_bytes()
        state = load_bytes(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: truncated or corrupt safetensors file ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1:3]
        raise UserError(
            f"{folder}: config.json disagrees with model.safetensors: {'; '.join(first)}"
        ) from None
    model.source = str(folder)  # type: ignore[attr-defined]
    # Identity of the weights as loaded (an index records it), from the bytes already read:
    # the file may be rebuilt later, and hashing it per query would be hot-path I/O.
    model.weights_sha256 = hashlib.sha256(data).hexdigest()  # type: ignore[attr-defined]
    return model.eval()


def _atomic_write(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(model: AttributeModel, folder: str | os.PathLike) -> None:
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_model(model, str(tmp)))


def model_config(model: AttributeModel) -> dict:
    return dict(model._hub_mixin_config)  # recorded by the mixin from __init__ arguments


def save_checkpoint(model: AttributeModel, folder: str | os.PathLike, metrics: dict | None = None,
                    card_extra: str = "") -> Path:  # fmt: skip
    """Write a complete checkpoint folder; readers never see a half-written one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_weights(model, staging)
        config = model_config(model)
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=1, sort_keys=True), "utf-8")
        (staging / CARD_NAME).write_text(model_card(config, metrics, card_extra), "utf-8")
        if metrics is not None:
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=1), "utf-8")
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        staging.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def model_card(config: dict, metrics: dict | None = None, extra: str = "") -> str:
    """Hub model card: front matter for the Hub, then what a person needs to judge the model."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="cocoattr",
        license="apache-2.0",
        tags=["image-classification", "multi-label", "visual-attributes", f"backbone:{config['backbone']}"],
        pipeline_tag="image-classification",
    )
    kind = config.get("kind", "trained")
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# cocoattr {kind} attribute model ({config['backbone']})", "",
        config.get("description", ""), "",
        f"- Attributes: {len(config['attributes'])} ({', '.join(sorted(set(config['attribute_types'])))})",
        f"- Input: {config['image_size']}x{config['image_size']} RGB, backbone `{config['backbone']}`"
        f" + ImageNet concepts={config.get('concepts')} + colour channels={config.get('colour')}",
        f"- Head: {config['heads']}-head cross-attention, d={config['dim']}, contrastive dim {config['embed_dim']}",
        "",
    ]  # fmt: skip
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                lines.append(
                    f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
                )
        lines.append("")
    if extra:
        lines += [extra, ""]
    lines += ["## Vocabulary", "", ", ".join(config["attributes"]), ""]
    return "\n".join(lines)


def push_to_hub(
    folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None
) -> str:
    """Upload a checkpoint folder to the Hub (HF_ENDPOINT is honoured); returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    read_config(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "metrics.json"],
        )
    except (HfHubHTTPError, OSError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise UserError(f"could not push to the Hub repo {repo_id!r} ({type(e).__name__}: {first})") from None
    return str(getattr(info, "commit_url", info))


METRICS_NAME = "metrics.json"  # written by save_checkpoint beside the card


def read_metrics(folder: str | os.PathLike) -> tuple[dict[str, int | float], str]:
    """A checkpoint's numeric metrics and where they were read: `metrics.json`, else (a folder
    fetched without it) the card's `## Metrics` table that `model_card` writes; ({}, "") if neither."""
    folder = Path(folder)
    try:
        metrics = json.loads((folder / METRICS_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        metrics = None
    if isinstance(metrics, dict):
        numeric = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numeric:
            return numeric, METRICS_NAME
    try:
        card = (folder / CARD_NAME).read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return {}, ""
    rows: dict[str, int | float] = {}
    section = False
    for line in card:
        if line.startswith("## "):
            section = line.strip() == "## Metrics"
        elif section and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 2 and cells[0] != "metric":
                try:
                    rows[cells[0]] = int(cells[1]) if cells[1].lstrip("-").isdigit() else float(cells[1])
                except ValueError:
                    continue  # the |---|---| rule
    return rows, ("model card" if rows else "")
