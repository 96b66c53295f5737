"""The review page through FastAPI's TestClient on a real tiny trained workdir: answers,
confirm / another individual / new individual / unusable and undo (gallery and log), bad
uploads, folders outside the roots, the token off loopback, and the training export."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from review_helpers import colour_photo, fresh_copy, open_copy, settings, trained_workdir

from retrieval.review.app import create_app
from retrieval.review.corrections import gallery_label
from retrieval.review.log import read_log
from retrieval.serving.gallery import Gallery, current_version

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_workdir(tmp_path_factory.mktemp("review"))


@pytest.fixture
def served(trained, tmp_path):
    """(client, workspace, photos folder) on a private copy of the trained workdir."""
    workdir = fresh_copy(trained, tmp_path)
    ws = open_copy(workdir)
    photos = tmp_path / "photos"
    for j, name in enumerate(["red", "blue", "green"]):
        colour_photo(photos / f"{name}_{j}.png", name, seed=700 + j)
    app = create_app(ws, settings(folders=(photos.resolve(),)))
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        yield client, ws, photos


def _png(path: Path) -> bytes:
    return path.read_bytes()


def upload(client: TestClient, *files: tuple[str, bytes]):
    return client.post("/upload", files=[("photos", (n, data, "image/png")) for n, data in files])


def answer_of(client: TestClient, response) -> dict:
    assert response.status_code == 303, response.text
    item_id = response.headers["location"].rsplit("/", 1)[-1]
    return client.get(f"/api/answers/{item_id}").json()


def on_disk(ws) -> Gallery:
    return Gallery.load(ws.gallery_root)


def test_an_upload_is_answered_with_the_decision_and_matches(served):
    client, ws, photos = served
    answer = answer_of(client, upload(client, ("../../etc/red.png", _png(photos / "red_0.png"))))
    assert answer["name"] == "red.png"  # the client's name is a label, never a path
    stored = Path(answer["image"])
    assert stored.parent == ws.workdir.resolve() / "review" / "photos"
    assert len(stored.stem) == 64 and stored.suffix == ".png"  # its content hash
    assert answer["status"] in ("accepted", "unclassifiable")
    assert 0 <= answer["confidence"] <= 1 and answer["rule"]
    assert len(answer["matches"]) == 5 and answer["matches"][0]["class"] == "red"
    assert answer["gallery_version"] == current_version(ws.gallery_root)
    page = client.get(f"/answers/{answer['id']}")
    assert page.status_code == 200 and "Nearest gallery photos" in page.text
    assert client.get(f"/answers/{answer['id']}/matches/0/thumb").status_code == 200
    assert client.get(f"/answers/{answer['id']}/compare/0").status_code == 200
    assert client.get(f"/answers/{answer['id']}/matches/9").status_code == 404


def test_confirm_then_undo(served):
    client, ws, photos = served
    answer = answer_of(client, upload(client, ("red.png", _png(photos / "red_0.png"))))
    candidate = answer["class"] or answer["evidence"]["candidate"]
    size = ws.gallery.size
    r = client.post(f"/answers/{answer['id']}/action", data={"action": "confirm"})
    assert r.status_code == 303
    assert gallery_label(ws.gallery, answer["image"]) == candidate  # served from memory
    assert gallery_label(on_disk(ws), answer["image"]) == candidate  # and saved
    assert ws.gallery.size == size + 1
    [entry] = read_log(ws.workdir)
    assert entry["action"] == "confirm" and entry["before"] is None and entry["after"] == candidate
    assert entry["overrode"]["matches"] and entry["gallery_version"] == answer["gallery_version"]
    assert entry["gallery_version_after"] != entry["gallery_version"]

    assert client.post(f"/answers/{answer['id']}/undo").status_code == 303
    assert gallery_label(on_disk(ws), answer["image"]) is None and ws.gallery.size == size
    assert [e["action"] for e in read_log(ws.workdir)] == ["confirm", "undo"]
    assert client.get(f"/api/answers/{answer['id']}").json()["in_effect"] is None
    assert client.post(f"/answers/{answer['id']}/undo").status_code == 400  # nothing left


def test_another_individual_then_new_individual_then_unusable(served):
    client, ws, photos = served
    answer = answer_of(client, upload(client, ("blue.png", _png(photos / "blue_1.png"))))
    act = f"/answers/{answer['id']}/action"
    assert client.post(act, data={"action": "choose", "name": "grey"}).status_code == 303
    assert gallery_label(on_disk(ws), answer["image"]) == "grey"
    assert client.post(act, data={"action": "new", "name": "teal"}).status_code == 303
    assert gallery_label(on_disk(ws), answer["image"]) == "teal"
    assert "teal" in on_disk(ws).class_names
    assert client.post(act, data={"action": "unusable"}).status_code == 303
    assert gallery_label(on_disk(ws), answer["image"]) is None
    log = read_log(ws.workdir)
    assert [(e["before"], e["after"]) for e in log] == [
        (None, "grey"),
        ("grey", "teal"),
        ("teal", None),
    ]
    # undo walks back one step at a time
    client.post(f"/answers/{answer['id']}/undo")
    assert gallery_label(on_disk(ws), answer["image"]) == "teal"
    client.post(f"/answers/{answer['id']}/undo")
    assert gallery_label(on_disk(ws), answer["image"]) == "grey"


@pytest.mark.parametrize(
    ("data", "fix"),
    [
        ({"action": "choose", "name": "nobody"}, "not an individual of the gallery"),
        ({"action": "new", "name": "red"}, "already an individual"),
        ({"action": "new", "name": "../evil"}, "not usable"),
        ({"action": "delete"}, "not one of"),
    ],
)
def test_a_bad_action_is_refused_and_changes_nothing(served, data, fix):
    client, ws, photos = served
    answer = answer_of(client, upload(client, ("red.png", _png(photos / "red_0.png"))))
    r = client.post(f"/answers/{answer['id']}/action", data=data)
    assert r.status_code == 400 and fix in r.text
    assert read_log(ws.workdir) == [] and gallery_label(ws.gallery, answer["image"]) is None


def _bomb() -> bytes:
    """A PNG header claiming 100000 x 100000 pixels, over twice Pillow's own limit."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "status", "says"),
    [
        ("notes.png", b"these are not pixels", 400, "is not an image"),
        ("empty.jpg", b"", 400, "empty"),
        ("bomb.png", _bomb(), 400, "too many pixels"),
        ("huge.png", _big_png(300), 400, "too many pixels"),
        ("big.png", b"\x89PNG" + bytes(3000), 413, "MB"),
    ],
)
def test_bad_uploads_are_refused_with_a_clean_message(served, name, data, status, says):
    client, ws, _ = served
    client.app.state.review.settings = settings(max_pixels=200 * 200, max_upload_bytes=2000)
    r = upload(client, (name, data))
    assert r.status_code == status and says in r.text, r.text
    assert not list((ws.workdir / "review" / "photos").glob("*"))


def test_one_bad_file_among_good_ones_is_listed_and_the_rest_answered(served):
    client, _, photos = served
    r = upload(
        client,
        ("red.png", _png(photos / "red_0.png")),
        ("blue.png", _png(photos / "blue_1.png")),
        ("junk.png", b"junk"),
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    queue = client.get("/api/queue").json()
    assert sorted(a["name"] for a in queue) == ["blue.png", "red.png"]
    assert "junk.png is not an image" in client.get("/").text


def test_a_folder_is_answered_least_confident_first(served):
    client, _, photos = served
    r = client.post("/folder", data={"folder": str(photos)})
    assert r.status_code == 303
    queue = client.get("/api/queue").json()
    assert len(queue) == 3
    confidences = [a["confidence"] for a in queue]
    assert confidences == sorted(confidences)
    accepted = client.get("/api/queue?show=accepted").json()
    assert all(a["status"] == "accepted" for a in accepted)
    declined = client.get("/api/queue?show=rejected").json()
    assert len(accepted) + len(declined) == 3


@pytest.mark.parametrize("folder", ["/etc", "../", "{photos}/../..", "{photos}/missing"])
def test_a_folder_outside_the_roots_is_refused(served, folder):
    client, _, photos = served
    r = client.post("/folder", data={"folder": folder.format(photos=photos)})
    assert r.status_code in (400, 403) and client.get("/api/queue").json() == []
    if "missing" not in folder:
        assert r.status_code == 403 and "outside the folders" in r.text


def test_requests_from_elsewhere_are_refused(served):
    client, _, _ = served
    assert client.get("/", headers={"host": "evil.example:8765"}).status_code == 403
    r = client.post("/folder", data={"folder": "x"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403


def test_off_loopback_every_request_needs_the_token(trained, tmp_path):
    from retrieval.review.settings import build_settings

    ws = open_copy(fresh_copy(trained, tmp_path))
    s = build_settings(host="0.0.0.0", port=8765, folders=[], top_k=5, local_match="off")
    assert s.token and s.address.endswith(f"?token={s.token}")
    with TestClient(create_app(ws, s), base_url="http://10.0.0.5:8765") as client:
        assert client.get("/").status_code == 401
        assert client.get("/?token=wrong").status_code == 401
        assert client.get("/api/queue", headers={"x-review-token": s.token}).status_code == 200
        assert client.get(f"/?token={s.token}").status_code == 200  # and sets the cookie
        assert client.get("/dashboard").status_code == 200


def test_the_dashboard_shows_the_evaluation_and_the_review_shares(served):
    client, ws, photos = served
    results = ws.workdir / "results"
    figures = results / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    metrics = {"checkpoint": "best_model.pt", "n_queries": 12, "recall_at_1": 0.75, "map": 0.5}
    (results / "test_metrics.json").write_text(json.dumps(metrics))
    Image.new("RGB", (40, 30)).save(figures / "test_risk_coverage.png")
    answer = answer_of(client, upload(client, ("red.png", _png(photos / "red_0.png"))))
    client.post(f"/answers/{answer['id']}/action", data={"action": "new", "name": "teal"})
    page = client.get("/dashboard").text
    assert "Recall@1" in page and "0.750" in page and "/figures/test_risk_coverage.png" in page
    assert "corrected" in page and "1 (100%)" in page
    assert client.get("/figures/test_risk_coverage.png").status_code == 200
    assert client.get("/figures/..%2Fmetrics.json").status_code == 404


def test_corrections_reach_the_next_training_run(served, capsys):
    """train.py --fresh --corrections: the filed photos train (in the train split, a new
    individual in the class map), the unusable ones do not, the rejected pair is recorded."""
    from conftest import TINY_TRAIN_ARGS

    import train
    from retrieval.data.splits import load_splits

    client, ws, photos = served
    red = answer_of(client, upload(client, ("red.png", _png(photos / "red_0.png"))))
    blue = answer_of(client, upload(client, ("blue.png", _png(photos / "blue_1.png"))))
    client.post(f"/answers/{red['id']}/action", data={"action": "new", "name": "teal"})
    client.post(f"/answers/{blue['id']}/action", data={"action": "unusable"})
    data = ws.loaded.config["data"]["data"]
    wd = ["--workdir", str(ws.workdir), "--data", data, "--epochs", "2", "--warmup_epochs", "1"]
    assert train.main([*wd, *TINY_TRAIN_ARGS, "--corrections", str(ws.workdir)]) == 2
    assert "cannot resume on; add --fresh" in capsys.readouterr().err
    assert train.main([*wd, *TINY_TRAIN_ARGS, "--fresh", "--corrections", str(ws.workdir)]) == 0

    rows = (ws.workdir / "review" / "training_manifest.csv").read_text().splitlines()
    assert rows[0] == "filename,label,group"
    assert any(row.startswith(f"{red['image']},teal,review-") for row in rows)
    assert not any(blue["image"] in row for row in rows)
    assert red["image"] in (ws.workdir / "review" / "hard_negatives.csv").read_text()
    splits = load_splits(ws.workdir / "splits")
    assert any(g.startswith("review-") for g in splits.train)
    assert "teal" in json.loads((ws.workdir / "class_to_idx.json").read_text())


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--port", "9000"], "add --serve"),
        (["--serve", "photo.jpg"], "without it"),
        (["--serve", "--rerank", "qe"], "without it"),
        (["--serve", "--folder", "/no/such/folder"], "not an existing folder"),
        (["--serve", "--port", "70000"], "not a TCP port"),
    ],
)
def test_search_serve_refuses_bad_flags_before_the_model_loads(argv, says, tmp_path, capsys):
    import search

    assert search.main([*argv, "--workdir", str(tmp_path / "none")]) == 2
    assert says in capsys.readouterr().err


def test_a_correction_while_another_process_writes_is_refused_and_changes_nothing(served):
    from retrieval.workdir_lock import workdir_lock

    client, ws, photos = served
    answer = answer_of(client, upload(client, ("red.png", _png(photos / "red_0.png"))))
    with workdir_lock(ws.workdir, "train.py --fresh"):  # another writer, as flock sees it
        r = client.post(f"/answers/{answer['id']}/action", data={"action": "confirm"})
    assert r.status_code == 409 and "train.py --fresh" in r.text and "try again" in r.text
    assert read_log(ws.workdir) == [] and gallery_label(on_disk(ws), answer["image"]) is None
    assert client.post(f"/answers/{answer['id']}/action", data={"action": "confirm"}).is_redirect


def test_a_torn_last_line_of_the_log_is_ignored_and_the_next_entry_kept(tmp_path):
    from retrieval.review.log import append_entry, log_path

    first = {"id": "a", "answer": "x", "action": "unusable", "after": None}
    append_entry(tmp_path, first)
    with log_path(tmp_path).open("a") as handle:
        handle.write('{"id": "b", "answer": "x", "act')  # killed mid-append
    assert read_log(tmp_path) == [first]
    second = {**first, "id": "c"}
    append_entry(tmp_path, second)
    assert read_log(tmp_path) == [first, second]


def _item(confidence: float, reason: str, *, label: int | None = None, error: str | None = None):
    from retrieval.query import QueryAnswer
    from retrieval.review.answers import ReviewItem
    from retrieval.serving.decide import Decision

    decision = None
    if error is None:
        decision = Decision(label, 0, confidence, reason, 0.5, 1, 0.4, 0.9, 1, 2)
    answer = QueryAnswer(f"/p/{reason}{confidence}", decision=decision, error=error)
    return ReviewItem(answer.image, answer.image, "x", answer, "v1", "now")


def test_the_queue_sorts_least_confident_first_and_filters_by_kind():
    from retrieval.review.answers import AnswerBook

    split = "unclassifiable: split between a (0.50) and b (0.40) - reshoot"
    far = "unclassifiable: nearest match is far (a at cosine 0.20, ...; likely a new individual)"
    items = [
        _item(0.9, "accepted", label=0),
        _item(0.3, split),
        _item(0.1, far),
        _item(0.0, "", error="cannot read image"),
    ]
    book = AnswerBook()
    book.add(items)
    assert [i.kind for i in book.queue()] == ["error", "new", "rejected", "accepted"]
    assert [i.kind for i in book.queue("rejected")] == ["new", "rejected"]
    assert [i.kind for i in book.queue("new")] == ["new"]
    assert [i.kind for i in book.queue("accepted")] == ["accepted"]
    assert book.counts() == {"all": 4, "rejected": 2, "new": 1, "accepted": 1}
