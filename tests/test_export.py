"""ONNX export and the torch-free query path (issue 6 item 3).

Tiny random-init timm models (test_efficientnet; tf_efficientnet_lite0 for TF "same" padding)
are saved as training saves them, exported, and run through onnxruntime: the embeddings must
match PyTorch's, preprocessing must match ``build_eval_transform`` pixel for pixel, and the
ONNX path (gallery search included) must work without importing torch.
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from export_helpers import (
    CLASSES,
    IMAGE_SIZE,
    NOISE_SIZES,
    cpu_plan,
    noise_images,
    torch_embed,
    torch_gallery,
    write_checkpoint,
)
from PIL import Image

from retrieval.class_prior import DEFAULT_PARAMS
from retrieval.data.transforms import build_eval_transform
from retrieval.errors import InputError
from retrieval.export import export_onnx, main
from retrieval.inference import load_inference_model
from retrieval.input_norm import IMAGENET, resolve_input_norm
from retrieval.onnx_embed import (
    OnnxEmbedder,
    onnx_gallery_fingerprint,
    open_onnx_workspace,
    preprocess,
    read_sidecar,
    sidecar_path,
)
from retrieval.pairs_query import choose_pair_options, score_pairs_file
from retrieval.query import answer_images
from retrieval.serving.expansion import GalleryExpansion
from retrieval.serving.gallery import Gallery
from retrieval.workspace import Workspace, gallery_fingerprint

REPO = Path(__file__).resolve().parents[1]


# tf_efficientnet_lite0: TF "same" padding, and its own pixel statistics (mean and std 0.5);
# gem: GeM pooling (clamp, learnable power). The others are checkpoints without input_norm.
@pytest.fixture(
    scope="module",
    params=[
        ("test_efficientnet", "avg", None),
        ("tf_efficientnet_lite0", "avg", "backbone"),
        ("test_efficientnet", "gem", None),
    ],
    ids=lambda p: "-".join(p[:2]),
)
def exported(request, tmp_path_factory) -> dict:
    """One checkpoint and its ONNX export per model, shared by the tests of this module."""
    backbone, pooling, input_norm = request.param
    root = tmp_path_factory.mktemp(f"{backbone}-{pooling}")
    checkpoint = write_checkpoint(
        root / "best_model.pt",
        backbone,
        image_size=IMAGE_SIZE,
        seed=1,
        pooling=pooling,
        input_norm=input_norm,
    )
    result = export_onnx(checkpoint, root / "model.onnx", opset=17)
    images = noise_images(root / "img", 2)
    gallery_root = root / "gallery"
    torch_gallery(checkpoint, images).save(gallery_root)
    return {
        "gallery_root": gallery_root,
        "checkpoint": checkpoint,
        "checkpoint_pooling": pooling,
        "checkpoint_norm": input_norm,
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
    want = torch_embed(exported["checkpoint"], paths)
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
    assert (
        embedder.fingerprint == load_inference_model(exported["checkpoint"], cpu_plan()).fingerprint
    )
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
    expected_norm = 0.5 if exported["checkpoint_norm"] == "backbone" else IMAGENET.mean[0]
    assert meta["input_norm"]["mean"][0] == expected_norm
    assert meta["input"]["name"] == "images" and meta["input"]["dtype"] == "uint8"
    assert meta["output"]["name"] == "embeddings"


def test_checkpoints_load_with_the_normalisation_they_were_trained_with(tmp_path):
    paths = noise_images(tmp_path / "img", 4)
    common = {"image_size": IMAGE_SIZE, "seed": 1}
    old = write_checkpoint(tmp_path / "old.pt", "tf_efficientnet_lite0", **common)
    new = write_checkpoint(
        tmp_path / "new.pt", "tf_efficientnet_lite0", input_norm="backbone", **common
    )
    own = resolve_input_norm("backbone", "tf_efficientnet_lite0")
    assert own != IMAGENET
    assert load_inference_model(old, cpu_plan()).model.input_norm == IMAGENET
    assert load_inference_model(new, cpu_plan()).model.input_norm == own
    # Same weights, other pixels in: the embeddings must differ.
    assert np.abs(torch_embed(old, paths) - torch_embed(new, paths)).max() > 1e-3


def test_batch_size_does_not_change_embeddings(exported):
    embedder = OnnxEmbedder(exported["result"].onnx_path)
    paths = exported["images"]
    one_by_one = embedder.embed_paths(paths, batch_size=1)
    all_at_once = embedder.embed_paths(paths, batch_size=32)
    np.testing.assert_allclose(one_by_one, all_at_once, atol=1e-5)
    assert embedder.embed_paths([], batch_size=4).shape == (0, 512)


NO_TORCH_SCRIPT = """
import sys
from collections import namedtuple
from pathlib import Path
from retrieval.onnx_embed import OnnxEmbedder, open_onnx_workspace
Record = namedtuple("Record", "path")
embedder = OnnxEmbedder(Path(sys.argv[1]))
out = embedder.embed_paths([Path(p) for p in sys.argv[3:]], batch_size=2)
ws = open_onnx_workspace(Path(sys.argv[1]), Path(sys.argv[2]))
hits = ws.gallery.search(ws.embed([Record(Path(p)) for p in sys.argv[3:]]), 1)
heavy = sorted(m for m in ("torch", "torchvision", "timm") if m in sys.modules)
top1 = ",".join(row[0] for row in hits.paths)
print(out.shape[0], out.shape[1], embedder.fingerprint, ",".join(heavy) or "none", top1)
"""


def test_onnx_path_never_imports_torch(exported):
    """A fresh interpreter embeds images through ONNX and searches the saved gallery with
    torch, torchvision and timm never imported."""
    paths = [str(p.resolve()) for p in exported["images"][:3]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    onnx_path, gallery_root = str(exported["result"].onnx_path), str(exported["gallery_root"])
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, onnx_path, gallery_root, *paths],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows, dim, fingerprint, heavy, top1 = done.stdout.split()
    assert (int(rows), int(dim)) == (3, 512)
    assert fingerprint == exported["result"].sidecar["fingerprint"]
    assert heavy == "none"
    assert top1.split(",") == paths  # each gallery image finds itself first


@pytest.mark.parametrize("expand", [False, True])
def test_onnx_workspace_answers_like_the_pytorch_one(exported, expand):
    """answer_images on the saved gallery: same top matches and scores as with PyTorch, with
    and without query expansion."""
    plan = cpu_plan()
    loaded = load_inference_model(exported["checkpoint"], plan)
    root = exported["gallery_root"]
    torch_ws = Workspace(root.parent, plan, loaded, Gallery.load(root), "none", 4)
    onnx_ws = open_onnx_workspace(exported["result"].onnx_path, root, batch_size=4)
    assert onnx_gallery_fingerprint(onnx_ws.embedder) == gallery_fingerprint(loaded, "none")
    if expand:  # in memory only: the saved gallery is shared with the other tests
        for ws in (torch_ws, onnx_ws):
            ws.gallery.set_expansion(GalleryExpansion(k=1, alpha=1.0))
    queries = [str(p.resolve()) for p in exported["images"]]
    want = answer_images(torch_ws, queries, top_k=3, expand=expand)
    got = answer_images(onnx_ws, queries, top_k=3, expand=expand)
    for query, a, b in zip(queries, got, want, strict=True):
        assert a.error is None and a.class_name == b.class_name
        if not expand:  # expanded, a random model's near-identical photos may outrank it
            assert a.matches[0].path == b.matches[0].path == query
        # Cosine scores, not distances: sqrt(2 - 2 cos) turns a 1e-7 difference near a
        # self-match into 3e-4 (PyTorch itself differs that much across batch sizes).
        want_scores = {m.path: m.score for m in b.matches}
        for m in a.matches:
            if m.path in want_scores:
                assert m.score == pytest.approx(want_scores[m.path], abs=1e-5)


def test_closed_set_pairs_score_alike_with_onnx_and_pytorch(exported, tmp_path):
    """The pairs mode with the closed-set prior on the ONNX path (defaults: no val split to
    tune on without torch) scores every pair as the PyTorch path does."""
    plan = cpu_plan()
    loaded = load_inference_model(exported["checkpoint"], plan)
    root = exported["gallery_root"]
    torch_ws = Workspace(root.parent, plan, loaded, Gallery.load(root), "none", 4)
    onnx_ws = open_onnx_workspace(exported["result"].onnx_path, root, batch_size=4)
    names = [p.name for p in exported["images"]]
    pairs = tmp_path / "pairs.csv"
    rows = [f"{i},{a},{b}\n" for i, (a, b) in enumerate(itertools.product(names, names))]
    pairs.write_text("row_id,query_image,gallery_image\n" + "".join(rows))
    options = choose_pair_options(onnx_ws, closed_set=True, tune=False)
    assert options.closed_set.params == DEFAULT_PARAMS and options.notes
    scores = {}
    for name, ws in (("torch", torch_ws), ("onnx", onnx_ws)):
        out = tmp_path / f"{name}.csv"
        score_pairs_file(ws, pairs, exported["images"][0].parent, out, options)
        scores[name] = np.loadtxt(out, delimiter=",", skiprows=1, usecols=1)
    assert scores["torch"].shape == (len(names) ** 2,)
    np.testing.assert_allclose(scores["onnx"], scores["torch"], atol=1e-4)


def test_onnx_workspace_needs_the_matching_saved_gallery(exported, tmp_path):
    onnx_path = exported["result"].onnx_path
    with pytest.raises(InputError, match="no saved gallery"):
        open_onnx_workspace(onnx_path, tmp_path / "gallery")
    other = write_checkpoint(tmp_path / "other.pt", "test_efficientnet", image_size=32, seed=9)
    torch_gallery(other, exported["images"][:3]).save(tmp_path / "gallery")
    with pytest.raises(InputError, match="another checkpoint"):
        open_onnx_workspace(onnx_path, tmp_path / "gallery")


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


def test_search_cli_answers_with_onnx_without_torch(exported):
    """`search.py --onnx` in a fresh interpreter: answers from the saved gallery, no torch."""
    workdir = exported["gallery_root"].parent  # the gallery lives at <workdir>/gallery
    query = str(exported["images"][0].resolve())
    script = (
        "import json, sys, io, contextlib\n"
        "import search\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = search.main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'heavy': heavy, 'answers': json.loads(out.getvalue())}))\n"
    )
    argv = ["--onnx", str(exported["result"].onnx_path), "--workdir", str(workdir)]
    done = subprocess.run(
        [sys.executable, "-c", script, query, *argv, "--format", "json"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["heavy"] == []
    assert result["answers"][0]["matches"][0]["path"] == query
