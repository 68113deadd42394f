"""An index as a Hugging Face dataset repo: `cocoattr index push`, and `hf://datasets/USER/NAME`
wherever an index file is accepted (`COCOATTR_INDEX`, `search --index`).

The repo holds parquet shards (`data/SPLIT-00000-of-0000N.parquet`: one row per image with its
path, COCO record columns when the index has them, the thumbnail as an `image` column, the
attribute probabilities and the embedding; readable with pandas or `datasets`), `index.json`
(the index metadata: checkpoint sha256 + source, attributes, temperature, what the image set
is), `text.npz` (the checkpoint tensors free-text search needs) and a dataset card naming the
checkpoint. Downloads go through huggingface_hub (resumed, cached, HF_HUB_OFFLINE honoured).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cocoattr.errors import UserError, http_client_errors, notice
from cocoattr.index import FORMAT, VERSION, Index

PREFIX = "hf://datasets/"
META_NAME = "index.json"
TEXT_NAME = "text.npz"
CARD_NAME = "README.md"
ROWS_PER_SHARD = 2000
RECORD_COLUMNS = ("coco_id", "file_name", "coco_url", "width", "height", "captions", "categories")
_LIST = {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"}


def hub_repo(spec: str | os.PathLike) -> str | None:
    """'USER/NAME' for 'hf://datasets/USER/NAME', else None (a local file)."""
    spec = str(spec)
    if not spec.startswith(PREFIX):
        return None
    repo = spec[len(PREFIX) :].strip("/")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"{spec}: expected hf://datasets/USER/NAME")
    return repo


# ----------------------------------------------------------------------------- index <-> parquet


def _features(index: Index) -> dict:
    """`datasets` feature types of the parquet columns (the Hub viewer shows `image` as pictures)."""
    value = lambda dtype: {"dtype": dtype, "_type": "Value"}  # noqa: E731
    out = {"path": value("string"), "size": value("int64"), "mtime": value("int64")}
    if index.records is not None:
        out |= {"coco_id": value("int64"), "file_name": value("string"), "coco_url": value("string"),
                "width": value("int64"), "height": value("int64"), "captions": _LIST, "categories": _LIST}  # fmt: skip
    if index.thumbnails is not None:
        out["image"] = {"_type": "Image"}
    length = {"probs": len(index.attributes), "embedding": int(index.embeddings.shape[1])}
    for name, n in length.items():
        out[name] = {"feature": value("float32"), "length": n, "_type": "Sequence"}
    return out


def to_table(index: Index, rows: slice = slice(None)):  # noqa: ANN201 - a pyarrow.Table
    """Rows `rows` of `index` as one arrow table (the shard format)."""
    import pyarrow as pa  # lazy: only pushing and loading Hub indexes need it

    idx = range(len(index))[rows]
    cols: dict = {
        "path": pa.array([index.paths[i] for i in idx], pa.string()),
        "size": pa.array(index.sizes[rows], pa.int64()),
        "mtime": pa.array(index.mtimes[rows], pa.int64()),
    }
    if index.records is not None:
        recs = [index.records[i] for i in idx]
        for key in RECORD_COLUMNS:
            kind = pa.list_(pa.string()) if key in ("captions", "categories") else None
            cols[key] = pa.array([r.get(key) for r in recs], kind)
    if index.thumbnails is not None:
        names = [str(index.records[i].get("file_name", "")) if index.records else index.paths[i] for i in idx]
        cols["image"] = pa.array(
            [{"bytes": index.thumbnails[i], "path": n} for i, n in zip(idx, names, strict=True)],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    for name, arr in (("probs", index.probs), ("embedding", index.embeddings)):
        block = np.ascontiguousarray(arr[rows], np.float32)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
    meta = {"huggingface": json.dumps({"info": {"features": _features(index)}})}
    return pa.table(cols).replace_schema_metadata(meta)


def write_dataset(index: Index, folder: Path, rows_per_shard: int = ROWS_PER_SHARD) -> list[Path]:
    """The dataset repo's files for `index` in `folder`; returns them."""
    import pyarrow.parquet as pq

    split = str(index.info.get("split") or "train")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(index) // rows_per_shard))
    files = []
    for s in range(n_shards):
        path = folder / "data" / f"{split}-{s:05d}-of-{n_shards:05d}.parquet"
        pq.write_table(to_table(index, slice(s * rows_per_shard, (s + 1) * rows_per_shard)), path)
        files.append(path)
    (folder / META_NAME).write_text(json.dumps(index.meta(), indent=1), "utf-8")
    arrays = {}
    if index.attribute_text is not None:
        arrays["attribute_text"] = np.asarray(index.attribute_text, np.float32)
    if index.text_proj is not None:
        arrays["text_proj_weight"], arrays["text_proj_bias"] = (
            np.asarray(a, np.float32) for a in index.text_proj
        )
    with open(folder / TEXT_NAME, "wb") as f:
        np.savez(f, **arrays)
    (folder / CARD_NAME).write_text(dataset_card(index, split), "utf-8")
    return [*files, folder / META_NAME, folder / TEXT_NAME, folder / CARD_NAME]


def dataset_card(index: Index, split: str) -> str:
    """The dataset card: Hub front matter (parquet config), then which checkpoint made it."""
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        license="cc-by-4.0", pretty_name=f"cocoattr index of COCO {split}" if index.records else "cocoattr index",
        tags=["cocoattr", "image-retrieval", "visual-attributes"] + (["coco"] if index.records else []),
        configs=[{"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*.parquet"}]}],
    )  # fmt: skip
    ck = index.checkpoint
    columns = "path, size, mtime, " + (", ".join(RECORD_COLUMNS) + ", " if index.records else "")
    columns += (
        "image (256 px JPEG thumbnail), " if index.thumbnails is not None else ""
    ) + "probs, embedding"
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# cocoattr search index ({len(index)} images{', COCO ' + split if index.records else ''})", "",
        "Attribute probabilities and contrastive embeddings of every image, made by the cocoattr "
        "checkpoint below; load it with `COCOATTR_INDEX=hf://datasets/<this repo>` (app) or "
        "`cocoattr search --index hf://datasets/<this repo> QUERY`.", "",
        f"- Checkpoint: `{ck.get('source', '?')}`",
        f"- Checkpoint sha256 (model.safetensors): `{ck.get('sha256', '?')}`",
        f"- Attributes: {len(index.attributes)}; embedding dim {index.embeddings.shape[1]}",
        f"- Columns: {columns}", "",
        "COCO captions and instance annotations: CC BY 4.0 (cocodataset.org); the images belong to "
        "their Flickr authors (thumbnails only, with `coco_url` for the original).", "",
    ])  # fmt: skip


def read_dataset(folder: Path, where: str) -> Index:
    """The index in a downloaded dataset repo `folder`; UserError naming `where` if it is not one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = json.loads((folder / META_NAME).read_text("utf-8"))
        shards = sorted((folder / "data").glob("*.parquet"))
        table = pa.concat_tables([pq.read_table(p) for p in shards]) if shards else None
        with np.load(folder / TEXT_NAME, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, pa.ArrowException) as e:
        raise UserError(f"{where}: not a cocoattr index dataset ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{where}: not a cocoattr index dataset (no {FORMAT} v{VERSION} {META_NAME})")
    if table is None:
        raise UserError(f"{where}: the dataset has no parquet shards under data/")
    try:
        index = _from_table(meta, table, data)
    except (KeyError, TypeError, ValueError, pa.ArrowException) as e:
        raise UserError(f"{where}: malformed cocoattr index dataset ({type(e).__name__}: {e})") from None
    return index.checked(where)


def _from_table(meta: dict, table, data: dict) -> Index:  # noqa: ANN001 - a pyarrow.Table
    n, attrs = table.num_rows, [str(a) for a in meta["attributes"]]

    def block(name: str) -> np.ndarray:
        return table[name].combine_chunks().flatten().to_numpy().astype(np.float32).reshape(n, -1)

    probs, emb = block("probs"), block("embedding")
    if probs.shape[1] != len(attrs):
        raise ValueError(f"probs have {probs.shape[1]} columns for {len(attrs)} attributes")
    records = None
    if "coco_id" in table.column_names:
        cols = {k: table[k].to_pylist() for k in RECORD_COLUMNS}
        records = [{k: cols[k][i] for k in RECORD_COLUMNS} for i in range(n)]
    thumbs = (
        [r["bytes"] or b"" for r in table["image"].to_pylist()] if "image" in table.column_names else None
    )
    proj = (data["text_proj_weight"], data["text_proj_bias"]) if "text_proj_weight" in data else None
    return Index(
        root_spec=str(meta["root"]), paths=[str(p) for p in table["path"].to_pylist()],
        sizes=table["size"].to_numpy().astype(np.int64), mtimes=table["mtime"].to_numpy().astype(np.int64),
        probs=probs.astype(np.float16), embeddings=emb, attributes=attrs, checkpoint=dict(meta["checkpoint"]),
        attribute_text=data.get("attribute_text"), text_proj=proj, temperature=float(meta.get("temperature", 0.1)),
        complete=bool(meta.get("complete", True)), records=records, thumbnails=thumbs, info=dict(meta.get("info") or {}),
    )  # fmt: skip


# ----------------------------------------------------------------------------- the Hub


def _hub_error(e: Exception, repo: str, doing: str) -> UserError:
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return UserError(f"could not {doing} the Hub dataset {repo!r} ({type(e).__name__}: {first})")


def push_index(index_path: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
               rows_per_shard: int = ROWS_PER_SHARD) -> str:  # fmt: skip
    """Publish the index file as the dataset repo `repo_id` (HF_ENDPOINT honoured); the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--repo {repo_id!r}: expected USER/NAME")
    index = Index.load(index_path)
    if not index.complete:
        raise UserError(f"{index_path}: an interrupted build; run `index build` again before pushing")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(index, Path(tmp), rows_per_shard)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="dataset")
            info = api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="dataset",
                                     commit_message=f"cocoattr index: {len(index)} images")  # fmt: skip
        except (HfHubHTTPError, OSError, *http_client_errors()) as e:
            raise _hub_error(e, repo_id, "push to") from None
    return str(getattr(info, "commit_url", info))


def download_index(repo_id: str) -> Path:
    """The dataset repo in the HF cache (downloaded once, resumed; offline: the cache only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset",
                                      allow_patterns=["data/*.parquet", META_NAME, TEXT_NAME, CARD_NAME]))  # fmt: skip
    except RepositoryNotFoundError:
        raise UserError(f"Hub dataset {repo_id!r} not found (or private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise UserError(f"Hub dataset {repo_id!r} is not cached and the Hub cannot be reached") from None
    except (HfHubHTTPError, OSError, ValueError, *http_client_errors()) as e:
        raise _hub_error(e, repo_id, "download") from None


def load_index(spec: str | os.PathLike, images: str | os.PathLike | None = None) -> Index:
    """An index file, or `hf://datasets/USER/NAME` (downloaded through the HF cache), its hits
    read from `images` (`Index.serve_from`: never from the root the index records)."""
    repo = hub_repo(spec)
    if repo is None:
        return Index.load(spec, images)
    return read_dataset(download_index(repo), str(spec)).serve_from(images)


def open_index(
    spec: str | os.PathLike,
    fallback: Callable[[], Index],
    say: Callable[[str], None] = notice,
    images: str | os.PathLike | None = None,
) -> Index:
    """`load_index(spec, images)`; a Hub index that cannot be fetched (offline, not cached) is said
    in one line and `fallback()` (the bundled gallery's index) is served instead."""
    if hub_repo(spec) is None:
        return Index.load(spec, images)
    try:
        return load_index(spec, images)
    except UserError as e:
        say(f"{e}; serving the bundled gallery instead")
        return fallback()


def checkpoint_mismatch(index: Index, identity: dict) -> str | None:
    """The one line to say when `index` was made by another checkpoint than `identity`'s, else None."""
    theirs, ours = index.checkpoint.get("sha256", ""), identity.get("sha256", "")
    if theirs == ours:
        return None
    return (
        f"the index was built with checkpoint {index.checkpoint.get('source', '?')} (sha256 {theirs[:12]}), "
        f"not the loaded one (sha256 {ours[:12]}); serving it anyway: attribute and text search use the "
        "index's own scores, search by photo needs the index's checkpoint"
    )
