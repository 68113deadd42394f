"""AttributeModel: attribute queries cross-attend to image regions.

    image -> FeatureGrid (B, C, h, w) -> token_proj -> tokens (B, N, d)
    attribute text embeddings (A, 384) -> query_encoder -> queries (A, d)
    8-head cross-attention(queries, tokens) -> per-attribute vectors (B, A, d), maps (B, A, h, w)
    group classifier (one weight vector per attribute, plus a global-pool term) -> logits (B, A)
    contrastive head: image embedding vs embedding of its attribute set (InfoNCE)

The attention weights, averaged over heads, are the per-attribute spatial maps (as in
ML-Decoder): what the app shows is what the classifier used, not a post-hoc guess.
The embedded zero-shot default is this same class with analytically set weights
(`cocoattr.zeroshot`), so every consumer serves both through one code path. This file is the
readable, trainable model only; the serving rewrites live in `cocoattr.inference`. The Hub
mixin records the __init__ arguments (config.json); `cocoattr.hub` reads and writes folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from huggingface_hub import PyTorchModelHubMixin
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from cocoattr.backbones import available
from cocoattr.features import FeatureGrid
from cocoattr.text import TEXT_DIM
from cocoattr.vocab import TYPES

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class ModelConfig(BaseModel):
    """What config.json may say, with bounds: a Hub repo is untrusted input, and a size such
    as `image_size: 30000` would otherwise allocate ~11 GB while the model is built."""

    model_config = ConfigDict(extra="forbid", strict=True)

    attributes: list[Name] = Field(min_length=1, max_length=10_000)
    attribute_types: list[Name] = Field(min_length=1, max_length=10_000)
    backbone: str = "mobilenet_v2"
    concepts: bool = True
    colour: bool = True
    objects: bool = False
    scene: bool = False
    concept_temperature: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)
    image_size: int = Field(288, ge=32, le=1024)
    dim: int = Field(512, ge=8, le=4096)
    heads: int = Field(8, ge=1, le=64)
    embed_dim: int = Field(384, ge=1, le=4096)
    temperature: float = Field(0.1, gt=0, le=100, allow_inf_nan=False)
    dropout: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    kind: str = Field("trained", max_length=100)
    description: str = Field("", max_length=10_000)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        if name not in available():
            raise ValueError(f"unknown backbone; known: {', '.join(available())}")
        return name

    @field_validator("attribute_types")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        unknown = sorted(set(types) - set(TYPES))
        if unknown:
            raise ValueError(f"unknown types {unknown}; known: {', '.join(TYPES)}")
        return types

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if len(self.attributes) != len(self.attribute_types):
            raise ValueError("attributes and attribute_types must have the same length")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError("attribute names must be unique")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        return self


@dataclass
class AttributeOutput:
    """What every consumer (CLI, index, app, training) gets from a forward pass."""

    logits: torch.Tensor  # (B, A)
    maps: torch.Tensor  # (B, A, h, w), attention over image regions, sums to 1 per attribute
    embedding: torch.Tensor  # (B, D), L2-normalised image embedding (contrastive space)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class AttributeModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="cocoattr",
    tags=["image-classification", "multi-label", "visual-attributes"],
    repo_url="https://github.com/cocoattr/cocoattr",
    license="apache-2.0",
):
    def __init__(
        self,
        attributes: list[str],
        attribute_types: list[str],
        backbone: str = "mobilenet_v2",
        concepts: bool = True,
        colour: bool = True,
        objects: bool = False,
        scene: bool = False,
        concept_temperature: float = 1.0,
        image_size: int = 288,
        dim: int = 512,
        heads: int = 8,
        embed_dim: int = 384,
        temperature: float = 0.1,
        dropout: float = 0.0,
        kind: str = "trained",
        description: str = "",
    ) -> None:
        super().__init__()
        ModelConfig(**{k: v for k, v in locals().items() if k in ModelConfig.model_fields})  # raises
        self.attributes = list(attributes)
        self.attribute_types = list(attribute_types)
        self.image_size = image_size
        self.kind = kind
        self.description = description
        self.temperature = temperature
        n_attr = len(attributes)

        self.backbone = FeatureGrid(
            backbone,
            concepts=concepts,
            colour=colour,
            concept_temperature=concept_temperature,
            objects=objects,
            scene=scene,
        )
        grid = self._grid_size(image_size)
        self.grid = grid
        self.token_proj = nn.Linear(self.backbone.channels, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        # Attribute encoder: text embedding of "name: description" -> attention query.
        self.register_buffer("text_embeddings", torch.zeros(n_attr, TEXT_DIM))
        self.query_encoder = nn.Linear(TEXT_DIM, dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        # Group classifier: attribute a reads its own attended vector, plus the mean token
        # (global context, which attention pooling alone under-weights for scene attributes).
        self.cls_weight = nn.Parameter(torch.zeros(n_attr, dim))
        self.cls_global = nn.Parameter(torch.zeros(n_attr, dim))
        self.cls_bias = nn.Parameter(torch.zeros(n_attr))
        # Contrastive head: image tokens and attribute-set text live in one embed_dim space.
        self.image_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(TEXT_DIM, embed_dim)
        nn.init.normal_(self.cls_weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _grid_size(self, image_size: int) -> tuple[int, int]:
        with torch.no_grad():
            x = torch.zeros(1, 3, image_size, image_size)
            h, w = self.backbone.body(x).shape[-2:]
        return int(h), int(w)

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    def queries(self) -> torch.Tensor:
        return self.query_encoder(self.text_embeddings)  # (A, d)

    def forward_head(self, grid: torch.Tensor, cells: torch.Tensor | None = None) -> AttributeOutput:
        """Head only, from a (B, C, h, w) feature grid: what the training feature cache feeds.
        `cells` (B, h*w) bool restricts attention and pooling to one region per image (an
        object's box or mask, `inference.region_cells`): the per-object path, trainable."""
        b, _, h, w = grid.shape
        tokens = self.token_proj(grid.flatten(2).transpose(1, 2))
        if tokens.shape[1] == self.pos_embed.shape[1]:
            tokens = tokens + self.pos_embed
        q = self.queries().unsqueeze(0).expand(b, -1, -1)
        ignore = None if cells is None or bool(cells.all()) else ~cells
        attended, weights = self.attn(q, tokens, tokens, key_padding_mask=ignore, need_weights=True,
                                      average_attn_weights=True)  # fmt: skip
        if ignore is None:
            pooled = tokens.mean(1)
        else:
            pooled = (tokens * cells[..., None]).sum(1) / cells.sum(1, keepdim=True).clamp_min(1)
        logits = (
            (self.dropout(attended) * self.cls_weight).sum(-1) + pooled @ self.cls_global.T + self.cls_bias
        )
        embedding = F.normalize(self.image_proj(pooled), dim=-1)
        return AttributeOutput(logits=logits, maps=weights.reshape(b, -1, h, w), embedding=embedding)

    def forward(self, images: torch.Tensor, cells: torch.Tensor | None = None) -> AttributeOutput:
        return self.forward_head(self.backbone(images), cells)

    def embed_attribute_sets(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, A) {0,1} -> (B, D): the text side of the contrastive head (mean of member embeddings)."""
        weights = labels.clamp_min(0).float()
        mean = weights @ self.text_embeddings / weights.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(self.text_proj(mean), dim=-1)

    def contrastive_loss(self, output: AttributeOutput, labels: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between images and their attribute sets (images with no positive skipped)."""
        keep = (labels == 1).any(1)
        if keep.sum() < 2:
            return output.logits.new_zeros(())
        img = output.embedding[keep]
        txt = self.embed_attribute_sets((labels[keep] == 1).float())
        sim = img @ txt.T / self.temperature
        target = torch.arange(sim.shape[0], device=sim.device)
        return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
