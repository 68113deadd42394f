"""tune_malloc: a CNN forward at batch 16 stops page-faulting its activations back in.

Each case runs in a child process: the settings are process-wide and cannot be undone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import json, resource, sys
import torch
from cocoattr.allocator import tune_malloc
took = tune_malloc() if sys.argv[1] == "tuned" else None
from torchvision.models import mobilenet_v2
body = mobilenet_v2(weights=None).features.eval()
x = torch.zeros(16, 3, 288, 288)
with torch.inference_mode():
    body(x), body(x)  # warm: the allocator has seen every buffer size once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    body(x), body(x)
print(json.dumps([took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2]))
"""


def faults_per_forward(mode: str) -> tuple[bool | None, float]:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=root, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "2"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tuned_forward_reuses_memory_instead_of_faulting_it_in():
    took, tuned = faults_per_forward("tuned")
    if not took:
        pytest.skip("not glibc: tune_malloc is a no-op here")
    _, stock = faults_per_forward("stock")
    # stock glibc unmaps every buffer over 32 MB on free: ~300 MB of pages per forward here
    assert stock > 20_000, stock
    assert tuned < stock / 20, (tuned, stock)
