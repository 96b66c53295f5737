"""Bad inputs each end in one clean line with the fix (issue 38, item 5), never a traceback.

Every case runs offline on tiny inputs in ``tmp_path``: a damaged pairs CSV, a warm-up that
would never fine-tune, the split report's reason for train-only classes, a Python without the
dependencies, the hub unreachable with nothing cached, and the modes of files users share.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN_ARGS, make_image

import search
import train
from retrieval.data.records import ImageRecord
from retrieval.data.splits import build_split_report, format_report, split_groups
from retrieval.errors import InputError
from retrieval.io import write_json_atomic
from retrieval.pairs import read_pairs, write_submission
from retrieval.serving.index import FlatIndex

REPO = Path(__file__).resolve().parents[1]
HEADER = "row_id,query_image,gallery_image\n"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# a, b: the pairs CSV ----------------------------------------------------------------------


def test_a_binary_pairs_file_is_named_with_the_format_expected(tmp_path, capsys):
    photo = make_image(tmp_path / "test.png")  # a PNG passed by mistake: a traceback before
    assert search.main(["--pairs", str(photo), "--workdir", str(tmp_path / "w")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("search.py: error: pairs file") and str(photo) in line
    assert "is binary, not a CSV" in line and HEADER.strip() in line


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (HEADER.encode() + "0,café.png,b.png\n".encode("latin-1"), "not UTF-8 text.*save it as"),
        ((HEADER + "0,a.png,b.png\n1,a.png,b.png,c.png\n").encode(), "not a well-formed CSV"),
        ((HEADER + '"0,a.png,b.png\n').encode(), "not a well-formed CSV"),
    ],
)
def test_pairs_files_that_are_not_clean_csv_text(tmp_path, content, match):
    path = tmp_path / "pairs.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        read_pairs(path)
    assert "\n" not in str(info.value) and HEADER.strip() in str(info.value)


def test_an_empty_cell_names_its_row_and_column_not_the_images_folder(tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(HEADER + "0,a.png,b.png\n1,a.png,\n2,,b.png\n")
    assert search.main(["--pairs", str(pairs), "--workdir", str(tmp_path / "w")]) == 2
    line = _one_error_line(capsys)
    assert "2 empty cell(s), the first in column gallery_image of data row 2 (row_id '1')" in line
    assert "fill the cell in or delete the row" in line and "--images" not in line


# c: files users share keep the umask's normal mode -----------------------------------------


def _write_shared_files(folder: Path) -> list[Path]:
    write_json_atomic(folder / "test_metrics.json", {"map": 0.5})
    write_submission(folder / "submission.csv", ["r0"], np.array([0.5]))
    index = FlatIndex(4, use_gpu=False)
    index.add(np.eye(4, dtype=np.float32))
    index.save(folder / "index.faiss")
    return [folder / name for name in ("test_metrics.json", "submission.csv", "index.faiss")]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = _write_shared_files(tmp_path)
    finally:
        os.umask(old)
    assert {path.name: path.stat().st_mode & 0o777 for path in written} == dict.fromkeys(
        (path.name for path in written), mode
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


# d: a warm-up that outlasts the run ---------------------------------------------------------


def test_a_warmup_longer_than_the_run_is_refused(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path / "w"), "--fresh", *TINY_TRAIN_ARGS]
    assert train.main([*argv, "--epochs", "3", "--warmup_epochs", "20"]) == 2
    line = _one_error_line(capsys)
    assert "--warmup_epochs 20 is more than --epochs 3" in line
    assert "never be fine-tuned" in line and "--warmup_epochs 2 or fewer" in line
    assert "--warmup_epochs 3 for a frozen-backbone probe" in line


def test_the_default_warmup_is_refused_for_a_short_run(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path / "w"), "--fresh", "--epochs", "2", *TINY_TRAIN_ARGS]
    assert train.main(argv) == 2  # the default --warmup_epochs 5
    assert "--warmup_epochs 5 is more than --epochs 2" in _one_error_line(capsys)


def test_a_warmup_as_long_as_the_run_is_the_probe_and_says_so(tiny_data, tmp_path, capsys):
    argv = ["--data", str(tiny_data), "--workdir", str(tmp_path / "w"), "--fresh"]
    argv += [*TINY_TRAIN_ARGS, "--epochs", "2", "--warmup_epochs", "2", "--prepare_only"]
    assert train.main(argv) == 0
    assert "note: --warmup_epochs = --epochs = 2: the backbone stays frozen throughout" in (
        capsys.readouterr().out
    )


# e: why a class is train-only ---------------------------------------------------------------


def _records(groups_per_class: dict[str, int]) -> list[ImageRecord]:
    return [
        ImageRecord(Path(f"/d/{c}/{c}-g{j}_1.jpg"), c, f"{c}-g{j}")
        for c, n in groups_per_class.items()
        for j in range(n)
    ]


def test_train_only_classes_of_as_many_groups_as_the_rest_are_said_to_be_not_drawn():
    # ten dogs of four groups each: val and test take 6 groups each, so some dogs give none
    records = _records({**{f"dog{i}": 4 for i in range(10)}, "solo": 1})
    report = build_split_report(records, split_groups(records, seed=42))
    assert report.n_single_group_classes == 1 and report.n_train_only_classes > 1
    drawn = report.n_train_only_classes - 1
    text = format_report(report)
    assert "too few groups" not in text
    assert f"{report.n_train_only_classes} train-only (1 of one group, which train keeps; " in text
    assert f"{drawn} not drawn for val/test: their share of each is under one group" in text


def test_the_prepare_summary_gives_the_reason_on_a_tiny_scan(tiny_data, tmp_path, capsys):
    make_image(tiny_data / "zebra" / "zebra-g0_1.jpg", seed=7)  # a class of one group
    argv = ["--data", str(tiny_data), "--workdir", str(tmp_path / "w"), "--fresh"]
    argv += [*TINY_TRAIN_ARGS, "--epochs", "2", "--warmup_epochs", "1", "--prepare_only"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("classes:"))
    assert "1 of one group, which train keeps" in line and "too few groups" not in line


# f: a Python without the dependencies -------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "args"),
    [
        ("search.py", ["photo.png"]),
        ("train.py", ["--fresh", "--data", "data"]),
        ("evaluate.py", ["--split", "val"]),
    ],
)
def test_a_python_without_the_packages_gets_one_line_with_the_fix(tmp_path, cli, args):
    # -S: no site-packages, as with a system python3 that never saw requirements.txt
    cmd = [sys.executable, "-S", str(REPO / cli), *args, "--workdir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{cli}: error: this Python ({sys.executable}) has no module '")
    assert f".venv/bin/python {cli}" in lines[0] and "pip install -r requirements.txt" in lines[0]


# g: the hub unreachable and nothing cached --------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """A hub endpoint on a closed local port and an empty cache; offline mode not set."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_an_unreachable_hub_fails_at_once_not_after_a_minute_of_retries(unreachable_hub):
    from retrieval.model.pretrained import create_backbone

    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        create_backbone("test_efficientnet", "timm")
    assert time.perf_counter() - started < 10  # huggingface_hub alone retries for ~50 s
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message
    assert "not in the local cache" in message and "--pretrained none" in message


def test_hub_probe_sees_a_listening_endpoint_and_leaves_proxies_to_the_download(monkeypatch):
    from retrieval.model.pretrained import hub_unreachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_unreachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None
    closed = f"http://127.0.0.1:{_closed_port()}"
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert "ConnectionRefusedError" in hub_unreachable(closed)
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    assert hub_unreachable(closed) is None  # only the download through the proxy can tell
