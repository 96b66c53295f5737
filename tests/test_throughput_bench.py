"""bench/train_throughput.py on the tiny colours: every speed it prints comes from real steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import train_throughput


def test_throughput_bench_times_the_frozen_stages_beside_the_whole_backbone(tiny_data, tmp_path):
    out = tmp_path / "throughput.json"
    argv = [
        *("--data", str(tiny_data), "--backbone", "test_efficientnet", "--image_size", "48"),
        *("--min_size", "32", "--batch_p", "3", "--batch_k", "2", "--num_workers", "0"),
        *("--batches", "2", "--warmup", "1", "--frozen_stages", "2", "--out", str(out)),
    ]
    assert train_throughput.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["frozen_stages"] == 2
    assert result["bare_images_per_s"] > 0 and result["bare_frozen_images_per_s"] > 0
    # the ratio comes from the unrounded speeds: it lies within their rounding (0.05 each)
    frozen, bare = result["bare_frozen_images_per_s"], result["bare_images_per_s"]
    low, high = (frozen - 0.05) / (bare + 0.05), (frozen + 0.05) / max(bare - 0.05, 1e-9)
    assert low - 5e-4 <= result["ratio_bare_frozen_over_bare"] <= high + 5e-4
