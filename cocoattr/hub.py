"""Checkpoint folders in the Hugging Face Hub layout: config.json + model.safetensors + README.md.

Folder I/O and the Hub transport only: `load_folder` builds the model from a folder strictly
(a truncated file or a config that disagrees with its tensors is a clear error, never a
half-loaded model), `save_checkpoint` writes one atomically, `download` / `push_to_hub` move
folders to and from the Hub. Which folder a user meant is `cocoattr.checkpoints`' job.
No pickles: weights are safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from huggingface_hub import HfApi, ModelCardData, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_model

from cocoattr.atomic import atomic_folder, atomic_write, atomic_write_json, atomic_write_text
from cocoattr.engine import ONNX_NAME  # the CPU serving graph; optional, checked when used
from cocoattr.errors import UserError, http_client_errors, invalid_config
from cocoattr.model import AttributeModel, ModelConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"
CONFIG_KEYS = set(ModelConfig.model_fields)


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch a checkpoint from the Hub (or HF_ENDPOINT) into the HF cache; offline: cache only."""
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME, ONNX_NAME],
        )
    except RepositoryNotFoundError:
        raise UserError(f"Hub checkpoint {repo_id!r} not found (or private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise UserError(f"Hub checkpoint {repo_id!r} is not cached and the Hub cannot be reached") from None
    except (HfHubHTTPError, OSError, ValueError, *http_client_errors()) as e:
        raise UserError(f"could not download Hub checkpoint {repo_id!r} ({type(e).__name__})") from None
    path = Path(folder)
    if not (path / WEIGHTS_NAME).is_file():
        raise UserError(f"Hub checkpoint {repo_id!r} has no {WEIGHTS_NAME}")
    return path


def read_config(folder: Path) -> dict:
    """config.json as a dict, validated with bounds (`ModelConfig`): one line naming the bad key."""
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
    try:
        ModelConfig(**config)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise invalid_config(str(path), e) from None
    return config


def load_folder(folder: str | os.PathLike, **overrides) -> AttributeModel:
    """Build an AttributeModel from a checkpoint folder and load its weights strictly, in eval mode."""
    folder = Path(folder)
    config = read_config(folder)
    config.update({k: v for k, v in overrides.items() if k in CONFIG_KEYS})
    try:
        model = AttributeModel(**config)
    except (TypeError, ValueError) as e:
        raise invalid_config(str(folder / CONFIG_NAME), e) from None
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
        hint = (
            "; a scene checkpoint from before the 4-channel scene stem (object and creature cover) "
            "must be rebuilt (`build-default --force`) or retrained"
            if config.get("scene") and "token_proj.weight" in str(e)
            else ""
        )
        raise UserError(
            f"{folder}: config.json disagrees with model.safetensors: {'; '.join(first)}{hint}"
        ) from None
    model.source = str(folder)  # type: ignore[attr-defined]
    # Identity of the weights as loaded (an index records it), from the bytes already read:
    # the file may be rebuilt later, and hashing it per query would be hot-path I/O.
    model.weights_sha256 = hashlib.sha256(data).hexdigest()  # type: ignore[attr-defined]
    return model.eval()


def save_weights(model: AttributeModel, folder: str | os.PathLike) -> None:
    atomic_write(Path(folder) / WEIGHTS_NAME, lambda tmp: save_model(model, str(tmp)))


def model_config(model: AttributeModel) -> dict:
    return dict(model._hub_mixin_config)  # recorded by the mixin from __init__ arguments


def save_checkpoint(model: AttributeModel, folder: str | os.PathLike, metrics: dict | None = None,
                    card_extra: str = "", extra_files: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write a complete checkpoint folder; readers never see a half-written one, and an
    interrupted save leaves the previous folder as it was."""
    with atomic_folder(folder) as staging:
        save_weights(model, staging)
        config = model_config(model)
        atomic_write_json(staging / CONFIG_NAME, config, sort_keys=True)
        atomic_write_text(staging / CARD_NAME, model_card(config, metrics, card_extra))
        if metrics is not None:
            atomic_write_json(staging / METRICS_NAME, metrics)
        for name, text in (extra_files or {}).items():
            atomic_write_text(staging / name, text)
    return Path(folder)


def model_card(config: dict, metrics: dict | None = None, extra: str = "") -> str:
    """Hub model card: front matter for the Hub, then what a person needs to judge the model."""
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


def write_onnx(folder: str | os.PathLike) -> Path:
    """The folder's `model.onnx` (the CPU serving graph, `cocoattr.engine`), exported when
    missing or made for other weights; a valid one is left as it is."""
    from cocoattr.engine import export_onnx, onnx_is_for

    folder = Path(folder)
    model = load_folder(folder)
    path = folder / ONNX_NAME
    if not onnx_is_for(path, model.weights_sha256):
        export_onnx(model, path, model.weights_sha256)
    return path


def push_to_hub(
    folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None
) -> str:
    """Upload a checkpoint folder to the Hub (HF_ENDPOINT is honoured); returns the commit URL."""
    folder = Path(folder)
    read_config(folder)
    write_onnx(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, METRICS_NAME, ONNX_NAME],
        )
    except (HfHubHTTPError, OSError, *http_client_errors()) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise UserError(f"could not push to the Hub repo {repo_id!r} ({type(e).__name__}: {first})") from None
    return str(getattr(info, "commit_url", info))


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
