"""The attention head's serving form, kept apart from the readable model.

`InferenceModel` computes `AttributeModel.forward` up to float rounding (tests/test_inference.py
checks it) with the head's image-independent work done once: projected queries, the attention's
output projection folded into the classifier, `token_proj` split by input part with all-zero
blocks skipped (the zero-shot default never reads the 1280 raw CNN channels) and token dimensions
that are zero on every image left out. It is the graph
`cocoattr.engine` exports for onnxruntime (CPU), the torch path `Predictor` runs on CUDA, and
the per-object head (`with_objects`, `objects_from`). The backbone runs as the model has it:
onnxruntime folds BatchNorm and fuses activations itself, cuDNN needs neither.
Everything derived from the weights is rebuilt when any weight changes in place (one cache,
keyed by the tensors' versions), so a model being trained can be served between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cocoattr.detector import decode_boxes, nms
from cocoattr.errors import UserError
from cocoattr.model import AttributeModel, AttributeOutput


@dataclass
class ObjectsOutput:
    """One image's detected objects: boxes (K, 4) as x1, y1, x2, y2 in [0, 1] of the image,
    detector scores (K,), COCO-80 labels (K,), and each object's attribute logits (K, A)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor


def box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(K, 4) relative boxes -> (K, h*w) bool: the grid cells whose centre lies in each box, or the
    cell under the box's centre when the box is smaller than a cell."""
    ys = (torch.arange(h, dtype=boxes.dtype, device=boxes.device) + 0.5) / h
    xs = (torch.arange(w, dtype=boxes.dtype, device=boxes.device) + 0.5) / w
    cy, cx = ys[:, None].expand(h, w).reshape(-1), xs[None, :].expand(h, w).reshape(-1)
    x1, y1, x2, y2 = (boxes[:, i : i + 1] for i in range(4))
    inside = (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)
    centre = ((y1 + y2) / 2 * h).long().clamp(0, h - 1) * w + ((x1 + x2) / 2 * w).long().clamp(0, w - 1)
    inside[torch.arange(len(boxes), device=boxes.device), centre[:, 0]] = True
    return inside


# A region of an image: a box (x1, y1, x2, y2) in [0, 1] of the image, or a binary mask (H, W) in
# the image's own frame (any resolution: the model sees the whole image squashed to its grid).
Region = Sequence[float] | np.ndarray | torch.Tensor


def region_cells(
    regions: Sequence[Region], h: int, w: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(K, h*w) bool: the grid cells the head may read for each region, boxes and masks alike.
    A box keeps `box_masks`' cells. A mask keeps, with the same rule, the cells whose centre
    lies in the mask, plus the cell under the mask's centroid (as a box keeps its centre's cell)
    when that cell holds part of the mask, else the cell holding most of it, so a mask smaller
    than a cell still has one. A rectangle's mask keeps the cells its box keeps."""
    rows = []
    for region in regions:
        r = region.detach().cpu().numpy() if isinstance(region, torch.Tensor) else np.asarray(region)
        if r.ndim == 1 and r.shape[0] == 4:
            rows.append(box_masks(torch.as_tensor(r, dtype=torch.float32)[None], h, w)[0])
        elif r.ndim == 2:
            rows.append(torch.from_numpy(_mask_cells(r.astype(bool, copy=False), h, w)))
        else:
            raise ValueError(f"a region is a box (4,) or a mask (H, W), not an array of shape {r.shape}")
    if not rows:
        return torch.zeros((0, h * w), dtype=torch.bool, device=device)
    return torch.stack(rows).to(device)


def _mask_cells(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    big_h, big_w = mask.shape
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise ValueError("an empty mask has no cells")
    # the pixel under each cell's centre, (r + 0.5) / h of the way down
    inside = mask[
        np.ix_(((np.arange(h) + 0.5) * big_h / h).astype(int), ((np.arange(w) + 0.5) * big_w / w).astype(int))
    ]
    counts = np.bincount((ys * h // big_h) * w + xs * w // big_w, minlength=h * w)
    cy = min(int((ys.mean() + 0.5) / big_h * h), h - 1)
    cx = min(int((xs.mean() + 0.5) / big_w * w), w - 1)
    centre = cy * w + cx if counts[cy * w + cx] else int(counts.argmax())
    cells = inside.reshape(-1).copy()
    cells[centre] = True
    return cells


def _weights_key(module: nn.Module) -> tuple:
    return tuple((id(t), t._version, t.data_ptr()) for t in (*module.parameters(), *module.buffers()))


class InferenceModel:
    """`AttributeModel` prepared for inference (see the module docstring); the model is untouched."""

    def __init__(self, model: AttributeModel) -> None:
        self.model = model.eval()
        self._key: tuple | None = None
        self._part_sizes: tuple[int, ...] | None = None

    def _refresh(self) -> None:
        key = _weights_key(self.model)
        if key == self._key:
            return
        m = self.model
        with torch.no_grad():
            heads, d = m.attn.num_heads, m.attn.embed_dim
            wq, wk, wv = m.attn.in_proj_weight.chunk(3)
            bq, bk, bv = m.attn.in_proj_bias.chunk(3)
            q = (m.queries() @ wq.T + bq).view(-1, heads, d // heads).transpose(0, 1) / (d // heads) ** 0.5
            # logit = c . (W_o x + b_o) = (W_o^T c) . x + c . b_o
            self.q = q
            # token dimensions that are zero on every image (no token_proj row, bias or position
            # feeds them) are dropped: every matmul reading the tokens gets shorter, and the result
            # is the same sum. The zero-shot default uses 274 of its 512.
            offset = m.token_proj.bias + m.pos_embed[0]  # token_proj's bias and position, added once
            live = (m.token_proj.weight.any(1) | offset.any(0)).nonzero()[:, 0]
            self.live = live = live if len(live) else live.new_zeros(1)
            self.wkv, self.bkv = (
                torch.cat([wk, wv]).T[live].contiguous(),
                torch.cat([bk, bv]),
            )  # one matmul for k and v
            self.cls_eff = m.cls_weight @ m.attn.out_proj.weight
            self.bias_eff = m.cls_bias + m.cls_weight @ m.attn.out_proj.bias
            # the mean token feeds the classifier's global term and the embedding: one matmul
            self.pooled_w = torch.cat([m.cls_global, m.image_proj.weight]).T[live].contiguous()
            self.pooled_b = torch.cat([self.bias_eff, m.image_proj.bias])
            self.offset, self.bias = offset[:, live].contiguous(), m.token_proj.bias[live].contiguous()
        self._part_sizes: tuple[int, ...] | None = None
        self._key = key

    def _token_blocks(self, sizes: tuple[int, ...]) -> list[torch.Tensor | None]:
        """token_proj's weight (its live rows) split by input part, transposed, None where all zero."""
        self._refresh()
        if self._part_sizes != sizes:
            blocks = self.model.token_proj.weight.detach()[self.live].split(list(sizes), dim=1)
            self._blocks = [None if not blk.any() else blk.T.contiguous() for blk in blocks]
            self._groups = _token_groups(self._blocks)
            self._part_sizes = sizes
        return self._blocks

    def prepared_backbone(self) -> nn.Module:
        """The model's `FeatureGrid` (eval), with the head's constants current with its weights."""
        self._refresh()
        return self.model.backbone

    def require_detector(self) -> None:
        if self.model.backbone.detector is None:
            raise UserError("this checkpoint has no object detector (config objects: false)")

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> AttributeOutput:
        """Normalised (B, 3, H, W) images -> output."""
        return self.head(self.prepared_backbone().parts(images))

    @torch.inference_mode()
    def head(self, parts: list[torch.Tensor]) -> AttributeOutput:
        """`model.forward_head(torch.cat(parts, 1))` for `FeatureGrid.parts` output, without
        building the concatenated grid."""
        return self._head(*self._tokens(parts))

    @torch.inference_mode()
    def with_objects(self, images: torch.Tensor, score_threshold: float = 0.35, max_objects: int = 10
                     ) -> tuple[AttributeOutput, list[ObjectsOutput]]:  # fmt: skip
        """The image output plus, per image, the detected objects and each object's attribute
        logits: the model's own head with its attention restricted to the grid cells inside the
        object's box (and the mean-pooled term to those cells), so an object's attributes come
        from the evidence where the object is."""
        self.require_detector()
        backbone = self.prepared_backbone()
        detections = backbone.detect(images)
        tokens, h, w = self._tokens(backbone.parts(images, detections))
        boxes, scores = decode_boxes(detections, input_size=images.shape[-1])
        found = objects_from(
            self, tokens, h, w, boxes, scores, images.shape[-1], score_threshold, max_objects
        )
        return self._head(tokens, h, w), found

    @torch.inference_mode()
    def with_regions(self, images: torch.Tensor, regions: Sequence[Sequence[Region]]
                     ) -> tuple[AttributeOutput, list[torch.Tensor]]:  # fmt: skip
        """The image output plus, per image, the (K_i, A) logits of the head restricted to each of
        its given regions (`region_cells`: boxes or masks), as `with_objects` does for detected
        boxes. No detector needed."""
        tokens, h, w = self._tokens(self.prepared_backbone().parts(images))
        return self._head(tokens, h, w), region_logits(self, tokens, h, w, regions)

    def _tokens(self, parts: list[torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """(B, N, live) tokens from `FeatureGrid.parts` (the live token dimensions, `_refresh`): each part read cell-major, the small
        evidence parts as one concatenated block (one matmul), bias and position added once.
        Shapes are Python ints but for the batch, so the exported graph has no shape arithmetic."""
        self._refresh()
        h, w = int(parts[0].shape[-2]), int(parts[0].shape[-1])
        self._token_blocks(tuple(int(p.shape[1]) for p in parts))
        m = self.model
        tokens = None
        for indices, weight in self._groups:
            grid = parts[indices[0]] if len(indices) == 1 else torch.cat([parts[i] for i in indices], 1)
            term = grid.permute(0, 2, 3, 1).reshape(-1, h * w, int(grid.shape[1])) @ weight
            tokens = term if tokens is None else tokens + term
        offset = self.offset if h * w == m.pos_embed.shape[1] else self.bias
        if tokens is None:  # every block zero: the tokens are the bias (and position) alone
            return offset.expand(parts[0].shape[0], h * w, -1), h, w
        return tokens + offset, h, w

    def _head(
        self, tokens: torch.Tensor, h: int, w: int, cells: torch.Tensor | None = None
    ) -> AttributeOutput:
        """The attention head; `cells` (B, N) bool restricts attention and pooling to those cells."""
        m = self.model
        heads = m.attn.num_heads
        n, d = int(tokens.shape[1]), m.attn.embed_dim
        a = int(self.q.shape[1])
        kv = (tokens @ self.wkv + self.bkv).view(-1, n, 2 * heads, d // heads)  # (B, N, 2H, dh)
        k, v = (
            kv[:, :, :heads].permute(0, 2, 3, 1),
            kv[:, :, heads:].transpose(1, 2),
        )  # (B,H,dh,N), (B,H,N,dh)
        logits = self.q @ k  # (B, H, A, N)
        if cells is not None:
            logits = logits.masked_fill(~cells[:, None, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(-1, a, d)  # (B, A, d)
        if cells is None:
            pooled = tokens.mean(1)
        else:
            pooled = (tokens * cells[..., None]).sum(1) / cells.sum(1, keepdim=True)
        glob, emb = (pooled @ self.pooled_w + self.pooled_b).split([a, int(self.pooled_w.shape[1]) - a], -1)
        logits = (attended * self.cls_eff).sum(-1) + glob
        embedding = F.normalize(emb, dim=-1)
        return AttributeOutput(logits=logits, maps=weights.mean(1).reshape(-1, a, h, w), embedding=embedding)


def _token_groups(
    blocks: list[torch.Tensor | None], small: int = 256
) -> list[tuple[list[int], torch.Tensor]]:
    """(part indices, weight) per token matmul: each large part alone, the consecutive small ones
    (colour, objects, scene: < `small` channels) as one block; all-zero parts left out."""
    groups: list[tuple[list[int], list[torch.Tensor]]] = []
    for i, block in enumerate(blocks):
        if block is None:
            continue
        if (
            block.shape[0] < small
            and groups
            and groups[-1][0][-1] == i - 1
            and groups[-1][1][-1].shape[0] < small
        ):
            groups[-1][0].append(i)
            groups[-1][1].append(block)
        else:
            groups.append(([i], [block]))
    return [(indices, torch.cat(ws) if len(ws) > 1 else ws[0]) for indices, ws in groups]


def objects_from(head: InferenceModel, tokens: torch.Tensor, h: int, w: int, boxes: torch.Tensor,
                 scores: torch.Tensor, size: int, score_threshold: float, max_objects: int
                 ) -> list[ObjectsOutput]:  # fmt: skip
    """Per image: the detector's boxes (`decode_boxes`: (B, N, 4) in input pixels, scores (B, N, 80))
    after NMS and each box's logits, from the head restricted to the grid cells inside it
    (`box_masks`) over the image's `tokens` (B, h*w, d)."""
    head._refresh()
    found = []
    for i in range(len(tokens)):
        d = nms(boxes[i], scores[i], score_threshold, max_detections=max_objects)
        rel = d.boxes / size
        found.append(
            ObjectsOutput(
                rel, d.scores, d.labels, _restricted(head, tokens[i : i + 1], h, w, box_masks(rel, h, w))
            )
        )
    return found


def region_logits(head: InferenceModel, tokens: torch.Tensor, h: int, w: int,
                  regions: Sequence[Sequence[Region]]) -> list[torch.Tensor]:  # fmt: skip
    """Per image of `tokens` (B, h*w, d), the (K_i, A) logits of the head restricted to each of
    `regions[i]` (`region_cells`); the per-object head of `objects_from`, on given regions."""
    if len(regions) != len(tokens):
        raise ValueError(f"{len(regions)} region lists for {len(tokens)} images")
    head._refresh()
    return [
        _restricted(head, tokens[i : i + 1], h, w, region_cells(regions[i], h, w, tokens.device))
        for i in range(len(tokens))
    ]


def _restricted(
    head: InferenceModel, tokens: torch.Tensor, h: int, w: int, cells: torch.Tensor
) -> torch.Tensor:
    """(K, A) logits of one image's (1, h*w, d) tokens through the head restricted to each row of `cells`."""
    if not len(cells):  # no region: nothing to score (the head cannot reshape an empty batch)
        return tokens.new_zeros((0, head.model.num_attributes))
    return head._head(tokens.expand(len(cells), -1, -1), h, w, cells).logits
