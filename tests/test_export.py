"""ONNX export and the torch-free query path (issue 6 item 3).

Tiny random-init timm models (test_efficientnet; tf_efficientnet_lite0 for TF "same" padding)
are saved as training saves them, exported, and run through onnxruntime: the embeddings must
match PyTorch's, preprocessing must match ``build_eval_transform`` pixel for pixel, and the
ONNX path must work without importing torch.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import checkpoint as ckpt
from retrieval.config import RunConfig
from retrieval.data.records import ImageRecord
from retrieval.data.transforms import build_eval_transform
from retrieval.device import plan_runtime, probe_device
from retrieval.embed import extract_embeddings
from retrieval.errors import InputError
from retrieval.export import export_onnx, main
from retrieval.inference import load_inference_model
from retrieval.model.embedder import build_embedding_model
from retrieval.onnx_embed import OnnxEmbedder, preprocess, read_sidecar, sidecar_path

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 48
CLASSES = ("alpha", "beta", "gamma")
# (width, height): square, wide, tall, odd margins (torchvision rounds half to even),
# smaller than the model input (upscaled), already at size.
NOISE_SIZES = [(64, 64), (97, 48), (48, 97), (120, 51), (51, 120), (30, 41), (48, 48), (201, 77)]


def write_checkpoint(
    path: Path, backbone: str, *, image_size: int, seed: int, pooling: str = "avg"
) -> Path:
    """A minimal checkpoint with the keys ``load_inference_model`` reads, as training writes it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # random init, reproducible, without touching the global RNG
        model = build_embedding_model(
            backbone, embedding_dim=512, pretrained="none", pooling=pooling
        )
    weights = ckpt.fp32_state_dict(model)
    state = {
        "format": ckpt.FORMAT_VERSION,
        "model": weights,
        "model_hash": ckpt.weights_hash(weights),
        "backbone": backbone,
        "embedding_dim": 512,
        "pooling": pooling,
        "image_size": image_size,
        "class_to_idx": {name: i for i, name in enumerate(CLASSES)},
        "config": RunConfig().to_dict(),
        "progress": {"train_seconds": 0.0},
        "epoch": 0,
        "versions": ckpt.library_versions(),
    }
    ckpt.save_atomic(state, path)
    return path


def noise_images(folder: Path, seed: int) -> list[Path]:
    """PIL images of random noise (plus a gradient so they differ in content), varied shapes."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(NOISE_SIZES):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ramp = np.linspace(0, 255, w, dtype=np.float64)[None, :, None] * rng.random(3)
        pixels = ((pixels.astype(np.float64) + ramp) / 2).astype(np.uint8)
        path = folder / f"noise_{i}.{'png' if i % 2 else 'jpg'}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def cpu_plan():
    return replace(plan_runtime(probe_device(device="cpu")), num_workers=0)  # no loader procs


# tf_efficientnet_lite0: TF "same" padding; gem: GeM pooling (clamp, learnable power).
@pytest.fixture(
    scope="module",
    params=[
        ("test_efficientnet", "avg"),
        ("tf_efficientnet_lite0", "avg"),
        ("test_efficientnet", "gem"),
    ],
    ids=lambda p: "-".join(p),
)
def exported(request, tmp_path_factory) -> dict:
    """One checkpoint and its ONNX export per model, shared by the tests of this module."""
    backbone, pooling = request.param
    root = tmp_path_factory.mktemp(f"{backbone}-{pooling}")
    checkpoint = write_checkpoint(
        root / "best_model.pt", backbone, image_size=IMAGE_SIZE, seed=1, pooling=pooling
    )
    result = export_onnx(checkpoint, root / "model.onnx", opset=17)
    images = noise_images(root / "img", 2)
    return {
        "checkpoint": checkpoint,
        "checkpoint_pooling": pooling,
        "result": result,
        "images": images,
    }


@pytest.mark.parametrize("size", NOISE_SIZES)
@pytest.mark.parametrize("image_size", [32, IMAGE_SIZE])
def test_preprocess_matches_eval_transform_pixel_for_pixel(size, image_size):
    rng = np.random.default_rng(sum(size) + image_size)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    want = build_eval_transform(image_size)(image).numpy()
    got = preprocess(image, image_size)
    assert got.dtype == np.uint8 and got.shape == (3, image_size, image_size)
    np.testing.assert_array_equal(got, want)


def test_onnx_embeddings_match_pytorch(exported):
    """Same checkpoint, same images: onnxruntime and PyTorch agree (cosine >= 0.999)."""
    paths = exported["images"]
    plan = cpu_plan()
    loaded = load_inference_model(exported["checkpoint"], plan)
    records = [ImageRecord(path=p.resolve(), label="", group=p.stem) for p in paths]
    want = extract_embeddings(
        loaded.model,
        records,
        transform=build_eval_transform(IMAGE_SIZE),
        plan=plan,
        batch_size=3,
        progress=False,
    )
    embedder = OnnxEmbedder(exported["result"].onnx_path)
    got = embedder.embed_paths(paths, batch_size=3)  # 8 images: batches of 3, 3 and 2
    assert got.shape == (len(paths), 512) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(got * want, axis=1)) >= 0.999
    np.testing.assert_allclose(got, want, atol=1e-4)
    # A random-init model maps every image near one common direction (pairwise cosines
    # ~0.9998), which alone would pass the check above. The image-dependent parts (each row
    # minus the mean row) must agree as well, so the check sees preprocessing and weights.
    got_c, want_c = got - got.mean(axis=0), want - want.mean(axis=0)
    cosines = np.sum(got_c * want_c, axis=1) / (
        np.linalg.norm(got_c, axis=1) * np.linalg.norm(want_c, axis=1)
    )
    assert np.min(cosines) >= 0.99
    assert embedder.fingerprint == loaded.fingerprint
    assert exported["result"].min_cosine >= 0.999


def test_sidecar_describes_the_model(exported):
    result = exported["result"]
    meta = read_sidecar(result.onnx_path)
    assert result.sidecar_path == sidecar_path(result.onnx_path)
    assert result.sidecar_path.name == "model.onnx.json"
    assert meta["image_size"] == IMAGE_SIZE and meta["embedding_dim"] == 512
    assert meta["backbone"] == load_inference_model(exported["checkpoint"], cpu_plan()).backbone
    assert meta["class_names"] == list(CLASSES)
    assert meta["pooling"] == exported["checkpoint_pooling"]
    assert meta["input"]["name"] == "images" and meta["input"]["dtype"] == "uint8"
    assert meta["output"]["name"] == "embeddings"


def test_batch_size_does_not_change_embeddings(exported):
    embedder = OnnxEmbedder(exported["result"].onnx_path)
    paths = exported["images"]
    one_by_one = embedder.embed_paths(paths, batch_size=1)
    all_at_once = embedder.embed_paths(paths, batch_size=32)
    np.testing.assert_allclose(one_by_one, all_at_once, atol=1e-5)
    assert embedder.embed_paths([], batch_size=4).shape == (0, 512)


NO_TORCH_SCRIPT = """
import sys
from pathlib import Path
from retrieval.onnx_embed import OnnxEmbedder
embedder = OnnxEmbedder(Path(sys.argv[1]))
out = embedder.embed_paths([Path(p) for p in sys.argv[2:]], batch_size=2)
heavy = sorted(m for m in ("torch", "torchvision", "timm") if m in sys.modules)
print(out.shape[0], out.shape[1], embedder.fingerprint, ",".join(heavy) or "none")
"""


def test_onnx_path_never_imports_torch(exported):
    """A fresh interpreter embeds images through ONNX with torch, torchvision, timm unloaded."""
    paths = [str(p) for p in exported["images"][:3]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(exported["result"].onnx_path), *paths],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows, dim, fingerprint, heavy = done.stdout.split()
    assert (int(rows), int(dim)) == (3, 512)
    assert fingerprint == exported["result"].sidecar["fingerprint"]
    assert heavy == "none"


def test_sidecar_of_another_export_is_refused(exported, tmp_path):
    """Copy the model but tamper the sidecar's fingerprint: the ONNX file's own metadata wins."""
    onnx_copy = tmp_path / "copy.onnx"
    onnx_copy.write_bytes(exported["result"].onnx_path.read_bytes())
    meta = dict(exported["result"].sidecar, fingerprint="0123456789abcdef:other:48")
    sidecar_path(onnx_copy).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="does not describe"):
        OnnxEmbedder(onnx_copy)


def test_missing_sidecar_or_model_is_an_input_error(tmp_path, exported):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(exported["result"].onnx_path.read_bytes())
    with pytest.raises(InputError, match=r"lone\.onnx\.json not found"):
        OnnxEmbedder(lone)
    with pytest.raises(InputError, match="not found; export one"):
        OnnxEmbedder(tmp_path / "absent.onnx")


def test_cli_writes_model_and_sidecar(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "ck.pt", "test_efficientnet", image_size=32, seed=3)
    out = tmp_path / "export" / "model.onnx"
    argv = ["--checkpoint", str(checkpoint), "--onnx", str(out), "--class_names=false"]
    assert main(argv) == 0
    assert out.is_file() and sidecar_path(out).is_file()
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["image_size"] == 32 and meta["class_names"] is None and meta["opset"] == 17
    assert meta["fingerprint"] == load_inference_model(checkpoint, cpu_plan()).fingerprint
    assert "wrote" in capsys.readouterr().out
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checkpoint", "{tmp}/missing.pt", "--onnx", "{tmp}/m.onnx"], "not found"),
        (["--checkpoint", "{tmp}/missing.pt", "--onnx", "{tmp}/m.onnx", "--opset", "5"], "opset"),
        (["--workdir", "{tmp}"], "best_model.pt not found"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert err.startswith("python -m retrieval.export: error:")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "model.onnx").exists()
