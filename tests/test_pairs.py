"""Pairs CSV I/O and vectorised pair scoring against a slow per-row reference."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrieval import pairs as pairs_module
from retrieval.errors import InputError
from retrieval.pairs import (
    distinct_images,
    missing_images,
    read_pairs,
    score_pairs,
    score_pairs_from_matrix,
    write_submission,
)

KAGGLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dogs_kaggle"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_read_pairs_keeps_order_and_text(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "pairs.csv",
        "row_id,query_image,gallery_image,extra\n"
        "007,b.png,a.png,x\n3,a.png,NA.png,y\n1,c.png,b.png,z\n",
    )
    frame = read_pairs(csv)
    assert list(frame.columns) == ["row_id", "query_image", "gallery_image"]
    assert frame["row_id"].tolist() == ["007", "3", "1"]  # text, order kept
    assert frame["gallery_image"].tolist() == ["a.png", "NA.png", "b.png"]  # "NA" is a name
    assert distinct_images(frame) == ["NA.png", "a.png", "b.png", "c.png"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("row_id,query_image,gallery_image\n", "no pairs"),
        ("row_id,query,gallery\n0,a,b\n", r"lacks columns \['query_image', 'gallery_image'\]"),
        ("row_id,query_image,gallery_image\n0,a,b\n0,b,c\n", "repeats row_id '0'"),
    ],
)
def test_read_pairs_rejects_bad_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        read_pairs(_write(tmp_path / "pairs.csv", text))


def test_read_pairs_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_pairs(tmp_path / "absent.csv")


def test_missing_images(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    assert missing_images(["a.png", "b.png"], tmp_path) == ["b.png"]
    with pytest.raises(InputError, match="images folder"):
        missing_images(["a.png"], tmp_path / "nope")


def test_score_pairs_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "row_id": ["0", "1", "2"],
            "query_image": ["a", "b", "a"],
            "gallery_image": ["b", "c", "a"],
        }
    )
    names = ["c", "a", "b"]
    embeddings = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])  # a is scaled: normalised here
    expected = [np.sqrt(0.5), np.sqrt(0.5), 1.0]
    scores = score_pairs(frame, names, embeddings)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    from_matrix = score_pairs_from_matrix(frame, names, unit @ unit.T)
    np.testing.assert_allclose(from_matrix, expected, atol=1e-6)


def test_score_pairs_rejects_unknown_names_and_bad_shapes() -> None:
    frame = pd.DataFrame({"row_id": ["0"], "query_image": ["a"], "gallery_image": ["zz"]})
    with pytest.raises(InputError, match=r"column gallery_image have no embedding.*'zz'"):
        score_pairs(frame, ["a", "b"], np.eye(2))
    with pytest.raises(InputError, match="one per row"):
        score_pairs(frame, ["a"], np.eye(2))
    with pytest.raises(InputError, match="unique"):
        score_pairs(frame, ["a", "a"], np.eye(2))
    with pytest.raises(InputError, match="zero rows"):
        score_pairs(frame, ["a", "zz"], np.zeros((2, 2)))
    with pytest.raises(InputError, match="square"):
        score_pairs_from_matrix(frame, ["a", "zz"], np.ones((2, 3)))


def test_kaggle_scale_scoring_matches_slow_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairs_module, "PAIR_CHUNK_ROWS", 50_000)  # several chunks, ragged end
    rng = np.random.default_rng(0)
    names = [f"test_{i:04d}.png" for i in range(371)]
    embeddings = _unit(rng, 371, 512)
    query = rng.integers(0, 371, size=137_270)
    gallery = rng.integers(0, 371, size=137_270)
    frame = pd.DataFrame(
        {
            "row_id": np.arange(137_270).astype(str),
            "query_image": np.array(names)[query],
            "gallery_image": np.array(names)[gallery],
        }
    )
    scores = score_pairs(frame, names, embeddings)
    assert scores.shape == (137_270,) and scores.dtype == np.float32
    sample = np.concatenate([rng.choice(137_270, size=500, replace=False), [0, 49_999, 50_000]])
    sample = np.append(sample, 137_269)
    for row in sample:
        i = names.index(frame["query_image"][row])
        j = names.index(frame["gallery_image"][row])
        assert scores[row] == pytest.approx(float(embeddings[i] @ embeddings[j]), abs=1e-5)
    full = embeddings @ embeddings.T
    np.testing.assert_allclose(score_pairs_from_matrix(frame, names, full), scores, atol=1e-5)


def test_write_submission_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "results" / "submission.csv"
    write_submission(out, ["007", "3", "1"], np.array([0.5, -0.25, 0.123456789], np.float32))
    assert out.read_text().splitlines() == [
        "row_id,similarity",
        "007,0.50000000",
        "3,-0.25000000",
        "1,0.12345679",
    ]
    write_submission(out, ["1"], np.array([1.0]))  # overwrite in place, no temp files left
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]
    with pytest.raises(InputError, match="one similarity per row_id"):
        write_submission(out, ["1", "2"], np.array([1.0]))
    with pytest.raises(InputError, match="NaN"):
        write_submission(out, ["1"], np.array([np.nan]))


@pytest.mark.shared_data
@pytest.mark.skipif(not (KAGGLE / "test.csv").is_file(), reason="../shared/data absent")
def test_real_kaggle_files_are_accepted(tmp_path: Path) -> None:
    frame = read_pairs(KAGGLE / "test.csv")
    names = distinct_images(frame)
    assert len(frame) > 0 and len(names) > 1
    assert missing_images(names, KAGGLE / "test") == []
    scores = score_pairs(frame, names, _unit(np.random.default_rng(1), len(names), 8))
    out = tmp_path / "submission.csv"
    write_submission(out, frame["row_id"].tolist(), scores)
    written = pd.read_csv(out, dtype={"row_id": str})
    sample = pd.read_csv(KAGGLE / "sample_submission.csv", dtype={"row_id": str})
    assert list(written.columns) == list(sample.columns) == ["row_id", "similarity"]
    assert written["row_id"].tolist() == sample["row_id"].tolist()


def test_submission_gets_the_usual_file_permissions(tmp_path) -> None:
    """Written through io.atomic_path: readable by others under a 022 umask (mkstemp's
    private 600 file was kept before)."""
    old = os.umask(0o022)
    try:
        write_submission(tmp_path / "s.csv", ["r0"], np.array([0.5]))
    finally:
        os.umask(old)
    assert (tmp_path / "s.csv").stat().st_mode & 0o777 == 0o644
