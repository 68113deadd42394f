"""AttributeModel: attribute queries cross-attend to image regions.

    image -> FeatureGrid (B, C, h, w) -> token_proj -> tokens (B, N, d)
    attribute text embeddings (A, 384) -> query_encoder -> queries (A, d)
    8-head cross-attention(queries, tokens) -> per-attribute vectors (B, A, d), maps (B, A, h, w)
    group classifier (one weight vector per attribute, plus a global-pool term) -> logits (B, A)
    contrastive head: image embedding vs embedding of its attribute set (InfoNCE)

The attention weights, averaged over heads, are the per-attribute spatial maps (as in
ML-Decoder): what the app shows is what the classifier used, not a post-hoc guess.
The embedded zero-shot default is this same class with analytically set weights
(`cocoattr.zeroshot`), so every consumer serves both through one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.nn import functional as F

from cocoattr.backbones import FeatureGrid
from cocoattr.text import TEXT_DIM


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
        if len(attributes) != len(attribute_types):
            raise ValueError("attributes and attribute_types must have the same length")
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.attributes = list(attributes)
        self.attribute_types = list(attribute_types)
        self.image_size = image_size
        self.kind = kind
        self.description = description
        self.temperature = temperature
        n_attr = len(attributes)

        self.backbone = FeatureGrid(
            backbone, concepts=concepts, colour=colour, concept_temperature=concept_temperature
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

    def forward_head(self, grid: torch.Tensor) -> AttributeOutput:
        """Head only, from a (B, C, h, w) feature grid: what the training feature cache feeds."""
        b, _, h, w = grid.shape
        tokens = self.token_proj(grid.flatten(2).transpose(1, 2))
        if tokens.shape[1] == self.pos_embed.shape[1]:
            tokens = tokens + self.pos_embed
        if not self.training and not torch.is_grad_enabled():
            return self._inference_head(tokens, h, w)
        q = self.queries().unsqueeze(0).expand(b, -1, -1)
        attended, weights = self.attn(q, tokens, tokens, need_weights=True, average_attn_weights=True)
        pooled = tokens.mean(1)
        logits = (
            (self.dropout(attended) * self.cls_weight).sum(-1) + pooled @ self.cls_global.T + self.cls_bias
        )
        embedding = F.normalize(self.image_proj(pooled), dim=-1)
        return AttributeOutput(logits=logits, maps=weights.reshape(b, -1, h, w), embedding=embedding)

    def forward(self, images: torch.Tensor) -> AttributeOutput:
        return self.forward_head(self.backbone(images))

    def forward_parts(self, parts: list[torch.Tensor]) -> AttributeOutput:
        """`forward_head(torch.cat(parts, 1))` for `FeatureGrid.parts` output, without building
        the concatenated grid. In inference each part is projected by its own block of
        `token_proj`, and all-zero blocks are skipped: the zero-shot default never reads the
        1280 raw CNN channels, which were ~half the head's time."""
        if self.training or torch.is_grad_enabled():
            return self.forward_head(torch.cat(parts, dim=1))
        b, _, h, w = parts[0].shape
        tokens = self.token_proj.bias
        for part, weight in zip(parts, self._token_blocks([p.shape[1] for p in parts]), strict=True):
            if weight is not None:
                tokens = tokens + part.flatten(2).transpose(1, 2) @ weight
        tokens = tokens.expand(b, h * w, -1)
        if tokens.shape[1] == self.pos_embed.shape[1]:
            tokens = tokens + self.pos_embed
        return self._inference_head(tokens, h, w)

    def _token_blocks(self, sizes: list[int]) -> list[torch.Tensor | None]:
        """token_proj's weight split by input part, transposed, None where all zero (cached)."""
        weight = self.token_proj.weight
        key = (id(weight), weight._version, tuple(sizes))
        cached = getattr(self, "_blocks", None)
        if cached is None or cached[0] != key:
            blocks = weight.detach().split(sizes, dim=1)
            self._blocks = (key, [None if not blk.any() else blk.T.contiguous() for blk in blocks])
        return self._blocks[1]

    def _inference_head(self, tokens: torch.Tensor, h: int, w: int) -> AttributeOutput:
        """The same function as the training path, with the image-independent work done once:
        projected queries are cached, and the attention's output projection is folded into the
        classifier (logit = c . (W_o x + b_o) = (W_o^T c) . x + c . b_o). Numerically equal
        up to float rounding (tests/test_model.py checks it)."""
        heads = self.attn.num_heads
        b, n, d = tokens.shape
        q, wk, bk, wv, bv, cls_eff, bias_eff = self._inference_constants()
        k = (tokens @ wk.T + bk).view(b, n, heads, d // heads).transpose(1, 2)  # (B, H, N, dh)
        v = (tokens @ wv.T + bv).view(b, n, heads, d // heads).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (B, H, A, N)
        attended = (weights @ v).transpose(1, 2).reshape(b, -1, d)  # (B, A, d)
        pooled = tokens.mean(1)
        logits = (attended * cls_eff).sum(-1) + pooled @ self.cls_global.T + bias_eff
        embedding = F.normalize(self.image_proj(pooled), dim=-1)
        return AttributeOutput(logits=logits, maps=weights.mean(1).reshape(b, -1, h, w), embedding=embedding)

    def _inference_constants(self) -> tuple[torch.Tensor, ...]:
        sources = (self.text_embeddings, self.query_encoder.weight, self.query_encoder.bias,
                   self.attn.in_proj_weight, self.attn.in_proj_bias, self.attn.out_proj.weight,
                   self.attn.out_proj.bias, self.cls_weight, self.cls_bias)  # fmt: skip
        key = tuple((id(t), t._version) for t in sources)
        cached = getattr(self, "_constants", None)
        if cached is None or cached[0] != key:
            heads, d = self.attn.num_heads, self.attn.embed_dim
            wq, wk, wv = self.attn.in_proj_weight.chunk(3)
            bq, bk, bv = self.attn.in_proj_bias.chunk(3)
            q = (self.queries() @ wq.T + bq).view(-1, heads, d // heads).transpose(0, 1) / (d // heads) ** 0.5
            cls_eff = self.cls_weight @ self.attn.out_proj.weight
            bias_eff = self.cls_bias + self.cls_weight @ self.attn.out_proj.bias
            self._constants = (key, (q, wk, bk, wv, bv, cls_eff, bias_eff))
        return self._constants[1]

    def embed_attribute_sets(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, A) {0,1} -> (B, D): the text side of the contrastive head (mean of member embeddings)."""
        weights = labels.clamp_min(0).float()
        mean = weights @ self.text_embeddings / weights.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(self.text_proj(mean), dim=-1)

    def embed_text(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """MiniLM sentence embeddings (B, 384) -> contrastive space, for free-text search."""
        return F.normalize(self.text_proj(text_embeddings), dim=-1)

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

    def _save_pretrained(self, save_directory) -> None:  # noqa: ANN001 - mixin signature
        from cocoattr.hub import save_weights

        save_weights(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, **kwargs):  # noqa: ANN206 - mixin signature
        from cocoattr.hub import load_model

        return load_model(model_id, **kwargs)
