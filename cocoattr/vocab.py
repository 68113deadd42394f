"""The attribute vocabulary: one JSON file is the single source of truth.

Everything that needs attribute names, types, synonyms or descriptions (the caption
miner, the text encoder, the query parser, the app) reads them from here, so the
order of attributes is the same everywhere and matches every checkpoint's outputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

TYPES = ("color", "material", "texture", "shape", "size", "state", "scene", "category")


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str
    synonyms: tuple[str, ...] = ()
    description: str = ""
    coco_attributes: tuple[str, ...] = ()
    implies: tuple[str, ...] = ()  # e.g. zebra -> animal, striped: used by the miner and zero-shot

    @property
    def prompt(self) -> str:
        """Text fed to the text encoder: the name grounded by its description."""
        return f"{self.name}: {self.description}" if self.description else self.name


@dataclass(frozen=True)
class Vocabulary:
    attributes: tuple[Attribute, ...]
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index = {a.name: i for i, a in enumerate(self.attributes)}
        if len(index) != len(self.attributes):
            raise ValueError("attribute names in a vocabulary must be unique")
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.attributes)

    def __iter__(self):
        return iter(self.attributes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Attribute:
        return self.attributes[self._index[name]]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def index(self, name: str) -> int:
        """Position of `name` in every label vector and model output."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown attribute {name!r}") from None

    def of_type(self, type_: str) -> list[Attribute]:
        return [a for a in self.attributes if a.type == type_]

    def to_json(self) -> dict:
        return {
            "version": 1,
            "types": list(TYPES),
            "attributes": [
                {
                    "name": a.name,
                    "type": a.type,
                    "synonyms": list(a.synonyms),
                    "description": a.description,
                    "coco_attributes": list(a.coco_attributes),
                    "implies": list(a.implies),
                }
                for a in self.attributes
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        try:
            attrs = tuple(
                Attribute(
                    name=str(row["name"]),
                    type=str(row["type"]),
                    synonyms=tuple(row.get("synonyms", ())),
                    description=str(row.get("description", "")),
                    coco_attributes=tuple(row.get("coco_attributes", ())),
                    implies=tuple(row.get("implies", ())),
                )
                for row in data["attributes"]
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed vocabulary: missing or wrong field {e}") from None
        bad = sorted({a.type for a in attrs} - set(TYPES))
        if bad:
            raise ValueError(f"malformed vocabulary: unknown attribute types {bad}")
        names = {a.name for a in attrs}
        dangling = sorted({t for a in attrs for t in a.implies} - names)
        if dangling:
            raise ValueError(f"malformed vocabulary: 'implies' names unknown attributes {dangling}")
        return cls(attrs)

    def closure(self, names: set[str]) -> set[str]:
        """`names` plus everything they imply, transitively (dog -> animal, furry, ...)."""
        out, todo = set(names), list(names)
        while todo:
            for implied in self[todo.pop()].implies:
                if implied not in out:
                    out.add(implied)
                    todo.append(implied)
        return out


def match_attribute(name: str, names: Sequence[str]) -> str | None:
    """`name` as `names` spell it, ignoring case and spacing ('Dog ' -> 'dog'), or None.

    Users and API callers type attribute names by hand; the vocabulary is lower case.
    """
    key = " ".join(name.split()).casefold()
    return next((n for n in names if n.casefold() == key), None)


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """The bundled vocabulary, or one from `path` (a checkpoint carries its own)."""
    if path is None:
        return _bundled()
    with open(path, encoding="utf-8") as f:
        return Vocabulary.from_json(json.load(f))


@lru_cache(maxsize=1)
def _bundled() -> Vocabulary:
    text = resources.files("cocoattr").joinpath("vocab/attributes.json").read_text("utf-8")
    return Vocabulary.from_json(json.loads(text))


# ----------------------------------------------------------------------------- words
# How text becomes vocabulary words: shared by the caption miner and the query parser.
IRREGULAR = {
    "men": "man",
    "women": "woman",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "knives": "knife",
    "leaves": "leaf",
    "wolves": "wolf",
    "shelves": "shelf",
    "calves": "calf",
    "halves": "half",
    "loaves": "loaf",
    "oxen": "ox",
    "people": "person",
    "buses": "bus",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
}
_NO_STRIP = ("ss", "us", "is", "ous", "ics")
_TOKEN = re.compile(r"[a-z0-9]+|[.,;:!?]")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens plus sentence punctuation; "isn't" -> "is not", hyphens split."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"\bcannot\b", "can not", text)
    text = re.sub(r"n't\b", " not", text)
    text = re.sub(r"'s\b", "", text)
    text = text.replace("no one", "noone")
    return _TOKEN.findall(text)


def lemma(token: str) -> str:
    """Singular of a plural noun by rule; other words come back unchanged."""
    if token in IRREGULAR:
        return IRREGULAR[token]
    if len(token) <= 3 or not token.endswith("s") or token.endswith(_NO_STRIP):
        return token
    if token.endswith("ies") and len(token) > 4:
        return token[:-3] + "y"
    if token.endswith("oes") and len(token) > 5:
        return token[:-2]
    if token.endswith(("sses", "xes", "zes", "ches", "shes")):
        return token[:-2]
    return token[:-1]
