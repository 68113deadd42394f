"""The CPU serving engine: the whole inference graph exported to ONNX, run by onnxruntime.

One graph per checkpoint: decoded, resized pixels (B, S, S, 3) uint8 -> logits, maps, embedding,
the head's tokens and the detector's decoded boxes with their class scores. The
graph normalises them itself (`transforms.normalize_pixels`, the same values bit for bit): a
quarter of the bytes go in, and no numpy pass over the batch comes first. What stays beside
it in torch is small and data-dependent: NMS and the per-object head (the image
head restricted to a box's or a mask's cells, `InferenceModel._head` on the exported tokens; a few
microseconds per object, so a second graph with a mask input would buy nothing).

The graph is made once per checkpoint and cached by the weights' sha256 (`model.weights_sha256`,
set by `hub.load_folder`) and the graph version under `cache_root()/onnx/<sha>-<version>.onnx`;
a checkpoint folder's own `model.onnx` (written by `push`) is used first when the hash recorded
in it matches the weights, and ignored with one notice when it does not. Models that were not
loaded from a folder (being trained, built in tests) are exported in memory, never cached.
Exported with the TorchScript exporter (`dynamo=False`): torch 2.14's default, the dynamo
exporter, needs onnxscript, and the TorchScript one gives a plain graph with a dynamic batch axis.
onnxruntime folds BatchNorm, fuses conv + activation and picks its own layouts, so the
hand-written torch rewrites for those are gone (bench/README.md has the figures).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cocoattr.atomic import atomic_write_bytes
from cocoattr.detector import MEAN_BGR, STD_BGR, decode_boxes
from cocoattr.errors import notice
from cocoattr.inference import InferenceModel, ObjectsOutput, Region, objects_from, region_logits
from cocoattr.model import AttributeModel, AttributeOutput
from cocoattr.tfjs import cache_root
from cocoattr.transforms import normalize_constants, normalize_pixels, pixel_planes

ONNX_NAME = "model.onnx"
SPINNING = os.environ.get("COCOATTR_ORT_SPINNING", "0")  # "1": onnxruntime's default
OPSET = 17
# the code that defines the graph: a graph exported by other code is exported again, not served
GRAPH_SOURCES = ("engine.py", "inference.py", "model.py", "features.py", "detector.py", "backbones.py")
GRAPH_SOURCES += ("transforms.py",)  # the graph's first step is `transforms.normalize_pixels`
META_SHA, META_VERSION, META_OPSET = "cocoattr.weights_sha256", "cocoattr.graph_version", "cocoattr.opset"
HEAD_OUTPUTS = ("logits", "maps", "embedding", "tokens")
# with a detector: its decoded boxes (B, N, 4) in input pixels and their class scores (B, N, 80)
BOX_OUTPUTS = ("boxes", "box_scores")
INPUT = "pixels"
_ignored_notices: set[str] = set()


@functools.cache
def graph_version() -> str:
    """Hash of the files that define the exported graph (GRAPH_SOURCES) and the torch version."""
    digest = hashlib.sha256(torch.__version__.encode())
    for name in GRAPH_SOURCES:
        digest.update((Path(__file__).resolve().parent / name).read_bytes())
    return digest.hexdigest()[:16]


class ServingGraph(nn.Module):
    """What is exported: `InferenceModel`'s forward pass with the detector's decoded boxes too."""

    def __init__(self, model: AttributeModel) -> None:
        super().__init__()
        self.model, self.head = model.eval(), InferenceModel(model)
        # the head's constants made now, not while tracing: the exporter would record their
        # derivation from the weights (`live`'s nonzero among it) instead of their values
        self.head._refresh()
        self.scale, self.shift = pixel_constants(model)
        # upstream's BGR constants in RGB order, and a detector copy whose first convolution reads
        # RGB (its weights' input channels reversed): the same sums, no reversed copy of the batch
        mean, std = (torch.tensor(c[::-1], dtype=torch.float32).view(1, 3, 1, 1) for c in (MEAN_BGR, STD_BGR))
        self.det_scale, self.det_shift = 1.0 / std, -mean / std
        self.detector = _reading_rgb(model.backbone.detector) if model.backbone.detector is not None else None
        self.eval()  # the exporter restores the wrapper's mode afterwards, recursively: keep it eval

    def _detector_input(self, planes: torch.Tensor) -> torch.Tensor:
        """The detector's input straight from the pixel planes with upstream NanoDet's 0..255
        mean/std (`detector.preprocess`, as a multiply and an add), in RGB order for
        `_reading_rgb`, not from the backbone's normalised batch as `FeatureGrid.detect` does:
        the same values up to rounding, with fewer passes over the batch."""
        return planes * self.det_scale + self.det_shift

    def output_names(self) -> list[str]:
        return [*HEAD_OUTPUTS, *(BOX_OUTPUTS if self.detector is not None else ())]

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        planes = pixel_planes(pixels)  # one transpose and cast for both bodies
        x = planes * self.scale + self.shift  # `normalize_pixels`, bit for bit
        grid = self.model.backbone
        detections = self.detector(self._detector_input(planes)) if self.detector is not None else None
        tokens, h, w = self.head._tokens(grid.parts(x, detections))
        o = self.head._head(tokens, h, w)
        # the boxes decoded here, not in torch after the run: the scene stem decodes them too
        extra = decode_boxes(detections, input_size=int(x.shape[-1])) if detections is not None else ()
        return (o.logits, o.maps, o.embedding, tokens, *extra)


def _reading_rgb(detector: nn.Module) -> nn.Module:
    """A copy of the NanoDet detector that takes RGB instead of BGR: its first convolution's
    weights with the input channels reversed (conv(flip(x), W) = conv(x, flip(W)) exactly)."""
    rgb = copy.deepcopy(detector).eval()
    first = rgb.conv_layers()[0][1]
    with torch.no_grad():
        first.weight.copy_(first.weight.flip(1))
    return rgb


def export_onnx(model: AttributeModel, f: str | os.PathLike | io.BytesIO, weights_sha256: str = "") -> None:
    """Write the serving graph of `model` to `f` (a path or a binary buffer), with a dynamic
    batch axis; the weights' hash, the graph version and the opset go into its metadata."""
    import onnx

    graph = ServingGraph(model)
    names = graph.output_names()
    x = torch.zeros(2, model.image_size, model.image_size, 3, dtype=torch.uint8)
    buffer = io.BytesIO()
    # The TorchScript exporter warns about every shape it freezes (the input size is fixed per
    # checkpoint) and about its own deprecation: nothing a user of `predict` can act on.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (x,), buffer, input_names=[INPUT], output_names=names, opset_version=OPSET,
            dynamic_axes={name: {0: "batch"} for name in [INPUT, *names]}, dynamo=False,
        )  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in ((META_SHA, weights_sha256), (META_VERSION, graph_version()), (META_OPSET, str(OPSET))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    if isinstance(f, io.BytesIO):
        f.write(data)
        return
    atomic_write_bytes(f, data)  # readers never see half a graph


def pixel_constants(model: AttributeModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The (scale, shift) that normalise `model`'s pixels for its backbone (`transforms.normalize`)."""
    grid = model.backbone
    return normalize_constants(grid.mean.cpu().view(3, 1, 1).numpy(), grid.std.cpu().view(3, 1, 1).numpy())


def check_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """`pixels` if it is a (B, size, size, 3) uint8 batch (what `resize_rgb` gives), else ValueError."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.shape[1:] != (size, size, 3):
        shape = getattr(pixels, "shape", None)
        raise ValueError(
            f"the engine takes (B, {size}, {size}, 3) uint8 pixels, not {type(pixels).__name__} {shape}"
        )
    return np.ascontiguousarray(pixels)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The cocoattr entries of an ONNX file's metadata ({} for an unreadable file)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not used
        return {}
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("cocoattr.")}


def onnx_is_for(path: str | os.PathLike, sha: str) -> bool:
    """Whether the ONNX file at `path` is this code's graph of the weights with hash `sha`."""
    meta = read_metadata(path) if Path(path).is_file() else {}
    return meta.get(META_SHA) == sha and meta.get(META_VERSION) == graph_version()


def onnx_file(model: AttributeModel) -> Path | None:
    """The graph file for a loaded checkpoint: its folder's valid `model.onnx`, else the cache
    entry (exported there when missing or stale); None for a model without `weights_sha256`."""
    sha = getattr(model, "weights_sha256", None)
    if not sha:
        return None
    source = getattr(model, "source", None)
    if source and (Path(source) / ONNX_NAME).is_file():
        shipped = Path(source) / ONNX_NAME
        if onnx_is_for(shipped, sha):
            return shipped
        if str(shipped) not in _ignored_notices:
            _ignored_notices.add(str(shipped))
            notice(f"{shipped}: made for other weights or an older graph; ignored (using the cache)")
    # the graph version in the name too: code of another version (a second worktree or install
    # sharing the cache) keeps its own file instead of replacing this one between check and load
    cached = cache_root() / "onnx" / f"{sha}-{graph_version()}.onnx"
    if not onnx_is_for(cached, sha):
        export_onnx(model, cached, sha)
    return cached


def _weights_key(model: nn.Module) -> tuple:
    return tuple((id(t), t._version, t.data_ptr()) for t in (*model.parameters(), *model.buffers()))


_exported: dict[tuple, bytes] = {}  # this process's in-memory exports, by weights key


def _in_memory(model: AttributeModel, key: tuple) -> bytes:
    """The graph of a model with no weights hash (or changed in place), exported once per
    weights version in this process (several Predictors of one model share it)."""
    if key not in _exported:
        buffer = io.BytesIO()
        export_onnx(model, buffer)
        while len(_exported) >= 4:
            _exported.pop(next(iter(_exported)))
        _exported[key] = buffer.getvalue()
    return _exported[key]


def session_options(threads: int):  # noqa: ANN201 - an onnxruntime.SessionOptions
    """The engine's onnxruntime settings (the bench's reference sessions use them too)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle intra-op threads sleep instead of spinning: spinning took the cores from the decode
    # threads and torch's box decoding between runs (bench/README.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", SPINNING)
    return options


class OnnxEngine:
    """`InferenceModel`'s interface (`__call__`, `with_objects`) on onnxruntime's CPU provider."""

    def __init__(self, model: AttributeModel, threads: int | None = None) -> None:
        self.model = model.eval()
        self.threads = threads or os.cpu_count() or 1
        self.head = InferenceModel(model)  # the masked per-object head, on the graph's tokens
        self._key: tuple | None = None
        self._tensors: list[torch.Tensor] = []
        self._versions: tuple[int, ...] = ()

    def _session(self):  # noqa: ANN202 - an onnxruntime.InferenceSession
        # Weights changed in place (a model being trained) bump their tensors' versions: only
        # then is the full key (which walks the module tree, ~1 ms: a twentieth of a batch-1
        # run) worth computing. A parameter replaced by a new tensor needs a new OnnxEngine.
        if self._key is not None and tuple(t._version for t in self._tensors) == self._versions:
            return self.session
        key = _weights_key(self.model)
        self._tensors = [*self.model.parameters(), *self.model.buffers()]
        self._versions = tuple(t._version for t in self._tensors)
        if key != self._key:  # weights changed in place: export again
            import onnxruntime as ort

            path = onnx_file(self.model) if self._key is None else None
            source = str(path) if path is not None else _in_memory(self.model, key)
            options = session_options(self.threads)
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            self.outputs = [o.name for o in self.session.get_outputs()]
            self._key = key
        return self.session

    def run(self, pixels: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """(B, S, S, 3) uint8 pixels -> the graph outputs named in `outputs` (default: all), as numpy."""
        x = check_pixels(pixels, self.model.image_size)
        session = self._session()
        names = list(outputs) if outputs is not None else self.outputs
        return dict(zip(names, session.run(names, {INPUT: x}), strict=True))

    def __call__(self, pixels: np.ndarray) -> AttributeOutput:
        out = self.run(pixels, HEAD_OUTPUTS[:3])
        return AttributeOutput(*(torch.from_numpy(out[k]) for k in HEAD_OUTPUTS[:3]))

    def with_objects(self, pixels: np.ndarray, score_threshold: float = 0.35,
                     max_objects: int = 10) -> tuple[AttributeOutput, list[ObjectsOutput]]:  # fmt: skip
        """As `InferenceModel.with_objects`: boxes decoded in the graph, NMS and the per-object head
        in torch."""
        self.head.require_detector()
        out = {k: torch.from_numpy(v) for k, v in self.run(pixels).items()}
        maps = out["maps"]
        with torch.inference_mode():
            found = objects_from(self.head, out["tokens"], *maps.shape[-2:], out["boxes"], out["box_scores"],
                                 self.model.image_size, score_threshold, max_objects)  # fmt: skip
        return AttributeOutput(out["logits"], maps, out["embedding"]), found

    def with_regions(self, pixels: np.ndarray, regions: Sequence[Sequence[Region]]
                     ) -> tuple[AttributeOutput, list[torch.Tensor]]:  # fmt: skip
        """As `InferenceModel.with_regions`: the head restricted to given boxes or masks, in torch
        on the graph's tokens."""
        out = {k: torch.from_numpy(v) for k, v in self.run(pixels, [*HEAD_OUTPUTS]).items()}
        maps = out["maps"]
        with torch.inference_mode():
            found = region_logits(self.head, out["tokens"], *maps.shape[-2:], regions)
        return AttributeOutput(out["logits"], maps, out["embedding"]), found


class TorchEngine:
    """The same interface on PyTorch (`InferenceModel`) on another device, e.g. CUDA: the uint8
    pixels are moved there and normalised there, outputs come back on the CPU."""

    def __init__(self, model: AttributeModel, device: str) -> None:
        self.model, self.device = model.to(device).eval(), torch.device(device)
        self.head = InferenceModel(self.model)
        self.scale, self.shift = (t.to(self.device) for t in pixel_constants(self.model))

    def normalized(self, pixels: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> the normalised (B, 3, S, S) batch on the device."""
        x = torch.from_numpy(check_pixels(pixels, self.model.image_size)).to(self.device)
        return normalize_pixels(x, self.scale, self.shift).contiguous()

    def __call__(self, pixels: np.ndarray) -> AttributeOutput:
        o = self.head(self.normalized(pixels))
        return AttributeOutput(o.logits.cpu(), o.maps.cpu(), o.embedding.cpu())

    def with_objects(self, pixels: np.ndarray, score_threshold: float = 0.35,
                     max_objects: int = 10) -> tuple[AttributeOutput, list[ObjectsOutput]]:  # fmt: skip
        o, found = self.head.with_objects(self.normalized(pixels), score_threshold, max_objects)
        cpu = [ObjectsOutput(*(t.cpu() for t in (f.boxes, f.scores, f.labels, f.logits))) for f in found]
        return AttributeOutput(o.logits.cpu(), o.maps.cpu(), o.embedding.cpu()), cpu

    def with_regions(self, pixels: np.ndarray, regions: Sequence[Sequence[Region]]
                     ) -> tuple[AttributeOutput, list[torch.Tensor]]:  # fmt: skip
        o, found = self.head.with_regions(self.normalized(pixels), regions)
        return AttributeOutput(o.logits.cpu(), o.maps.cpu(), o.embedding.cpu()), [f.cpu() for f in found]


def serving_engine(model: AttributeModel, device: str = "cpu", threads: int | None = None
                   ) -> OnnxEngine | TorchEngine:  # fmt: skip
    """onnxruntime on the CPU, PyTorch anywhere else ("cuda", "cuda:1", ...)."""
    from cocoattr.errors import UserError

    if device == "cpu":
        return OnnxEngine(model, threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: CUDA is not available here (use --device cpu)")
    try:
        return TorchEngine(model, device)
    except RuntimeError as e:
        raise UserError(f"device {device!r}: {e}") from None
