"""Build the embedded zero-shot default: an AttributeModel whose head is set, not trained.

Knowledge comes from text only: the 1000 ImageNet classes' lemmas and WordNet glosses
(shipped in timm) are matched to the vocabulary by keywords and MiniLM similarity, and the
vocabulary's `implies` relation spreads them (tabby -> cat -> animal, furry). That gives
P(attribute | class). Colour words come from fixed colour-name channels instead.

The head is then set so that, for attribute a and image region i,
    evidence_a(i) = sum_c P(a|c) p_i(c)        (or the colour fraction of region i)
sits in token dimension a (and a copy in dimension a + 256); attribute a's query attends
sharply over its own evidence in one head (a soft max over regions, whose weights are the
heatmap) while the copy is mean-pooled by a uniform head; the classifier mixes the two.
Everything is an ordinary AttributeModel weight, so training can start from it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from cocoattr.backbones import COLOUR_CHANNELS, COLOUR_TERMS
from cocoattr.vocab import Vocabulary, load_vocabulary

# Fixed knobs of the construction (see README "Embedded default" for how they were chosen).
KNOBS = {
    "sharpness": 8.0,  # attention logit scale on evidence in [0, 1]
    "mix": 0.75,  # weight of the sharp (max-like) pooling vs the mean pooling
    # logit = type_scale[t] * pooled evidence + type_bias[t], per attribute type t. Fitted by
    # train/calibrate_default.py on the gallery (8 types x 2 numbers; 2-fold CV in the README).
    "type_scale": {"color": 32.0, "material": 32.0, "texture": 32.0, "shape": 32.0,
                   "size": 1.0, "state": 2.0, "scene": 8.0, "category": 1.0},
    "type_bias": {"color": -3.0, "material": -3.0, "texture": -3.0, "shape": -3.0,
                  "size": -2.5, "state": -3.0, "scene": -3.0, "category": -3.0},
    "lemma_match": 1.0,  # P(a|c) when a term names the class itself
    "gloss_match": 0.6,  # ... when a term appears in its gloss
    "sim_low": 0.35,  # MiniLM cosine mapped linearly from [sim_low, sim_high] to [0, sim_weight]
    "sim_high": 0.65,
    "sim_weight": 0.6,
    "implied": 0.9,  # P(implied | class) >= implied * P(a | class)
}  # fmt: skip
# Colour attributes read the colour channels: {channel: weight, "_bias": constant}. The three
# whole-image properties are centred so that an ordinary photo sits near zero evidence.
COLOUR_EVIDENCE = {t: {t: 1.0} for t in COLOUR_TERMS} | {
    "dark": {"brightness": -1.0, "_bias": 0.35},
    "bright": {"brightness": 1.0, "_bias": -0.6},
    "colorful": {"saturation": 1.0, "_bias": -0.45},
}
GLOBAL_ATTRIBUTES = ("dark", "bright", "colorful")  # mean-pooled only: they describe the whole image
DESCRIPTION = (
    "Embedded zero-shot default: an ImageNet MobileNetV2 with attribute knowledge derived from "
    "text (ImageNet class names and WordNet glosses matched to the vocabulary with MiniLM and "
    "keywords) plus fixed colour-name channels. It was trained on no attribute data; use a "
    "trained checkpoint for real accuracy."
)


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """[(lemmas, gloss)] for the 1000 ImageNet-1k classes, in model output order (from timm)."""
    from importlib import resources

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


def _term_regex(term: str) -> re.Pattern:
    words = [re.escape(w) for w in term.lower().split()]
    return re.compile(r"\b" + r"\s+".join(words) + r"(?:s|es)?\b")


def class_attribute_matrix(
    vocab: Vocabulary, knobs: dict = KNOBS, use_text_encoder: bool = True
) -> np.ndarray:
    """P(attribute | ImageNet class), (1000, A) in [0, 1]."""
    classes = imagenet_classes()
    lemmas = [c[0].lower().replace("_", " ") for c in classes]
    glosses = [c[1].lower() for c in classes]
    m = np.zeros((len(classes), len(vocab)), np.float32)
    for j, attr in enumerate(vocab):
        if attr.name in COLOUR_EVIDENCE:
            continue  # colour words come from pixels, not class names
        for term in (attr.name, *attr.synonyms):
            rx = _term_regex(term)
            for c in range(len(classes)):
                if rx.search(lemmas[c]):
                    m[c, j] = max(m[c, j], knobs["lemma_match"])
                elif rx.search(glosses[c]):
                    m[c, j] = max(m[c, j], knobs["gloss_match"])
    if use_text_encoder:
        from cocoattr.text import encode

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


def build_model(vocab: Vocabulary | None = None, backbone: str = "mobilenet_v2", knobs: dict = KNOBS,
                image_size: int = 288, concept_temperature: float = 1.0):  # fmt: skip
    """The zero-shot AttributeModel (ImageNet weights loaded, head set analytically)."""
    from cocoattr.model import AttributeModel
    from cocoattr.text import encode

    vocab = vocab or load_vocabulary()
    n_attr, dim, heads = len(vocab), 512, 8
    half = dim // 2
    if n_attr > half:
        raise ValueError(f"the zero-shot construction needs at most {half} attributes, got {n_attr}")
    model = AttributeModel(
        attributes=vocab.names,
        attribute_types=[a.type for a in vocab],
        backbone=backbone,
        concepts=True,
        colour=True,
        concept_temperature=concept_temperature,
        image_size=image_size,
        dim=dim,
        heads=heads,
        embed_dim=384,
        kind="zero-shot",
        description=DESCRIPTION,
    )
    model.backbone.load_imagenet()
    text = torch.from_numpy(encode([a.prompt for a in vocab]))
    m = torch.from_numpy(class_attribute_matrix(vocab, knobs))
    feat_c = model.backbone.feature_channels
    n_cls = model.backbone.classifier.out_features
    colour_at = feat_c + n_cls

    with torch.no_grad():
        for p in model.parameters():
            if p is not model.backbone and not any(p is q for q in model.backbone.parameters()):
                p.zero_()
        model.text_embeddings.copy_(text)
        # Tokens: dims a and half+a both hold evidence_a(region).
        w = model.token_proj.weight  # (dim, C)
        for j, attr in enumerate(vocab):
            for row in (j, half + j):
                if attr.name in COLOUR_EVIDENCE:
                    for channel, value in COLOUR_EVIDENCE[attr.name].items():
                        if channel == "_bias":
                            model.token_proj.bias[row] = value
                        else:
                            w[row, colour_at + COLOUR_CHANNELS.index(channel)] = value
                else:
                    w[row, feat_c : feat_c + n_cls] = m[:, j]
        # Queries: one-hot on the attribute's own evidence dimension, scaled so that head
        # (a // head_dim) attends with logits sharpness * evidence; other heads see 0 -> uniform.
        head_dim = dim // heads
        targets = torch.zeros(n_attr, dim)
        targets[torch.arange(n_attr), torch.arange(n_attr)] = knobs["sharpness"] * head_dim**0.5
        # Attribute encoder: the minimum-norm linear map taking each text embedding to its query.
        solution = torch.linalg.lstsq(text.double(), targets.double(), driver="gelsd").solution
        model.query_encoder.weight.copy_(solution.T.float())
        model.query_encoder.bias.zero_()
        eye = torch.eye(dim)
        model.attn.in_proj_weight.copy_(torch.cat([eye, eye, eye]))
        model.attn.in_proj_bias.zero_()
        model.attn.out_proj.weight.copy_(eye)
        model.attn.out_proj.bias.zero_()
        # Classifier: type_scale * (mix * sharp + (1 - mix) * mean) + type_bias.
        for j, attr in enumerate(vocab):
            mix = 0.0 if attr.name in GLOBAL_ATTRIBUTES else knobs["mix"]
            scale = knobs["type_scale"][attr.type]
            model.cls_weight[j, j] = scale * mix
            model.cls_weight[j, half + j] = scale * (1 - mix)
            model.cls_bias[j] = knobs["type_bias"][attr.type]
        # Contrastive head: image embedding = sum_a mean-pooled evidence_a * text_a (MiniLM space).
        model.image_proj.weight[:, half : half + n_attr] = text.T
        model.text_proj.weight.copy_(torch.eye(384))
    return model.eval()


def build_default(out: str | Path, backbone: str = "mobilenet_v2") -> Path:
    """Build and save the embedded default checkpoint folder (Hub layout)."""
    from cocoattr.hub import save_checkpoint

    model = build_model(backbone=backbone)
    extra = (
        "## What this is\n\nA zero-shot model: no attribute labels were used. It is the fallback the "
        "app and CLI use offline, and a starting point for training (same architecture and format).\n\n"
        f"Construction knobs: `{KNOBS}`"
    )
    return save_checkpoint(model, out, card_extra=extra)
