"""Who is this? ``python search.py image.png`` / ``python search.py --pairs test.csv`` (SPEC 5).

Answers each photo with its top-K gallery matches and one named individual with a calibrated
confidence, or "unclassifiable" with the reason; the pairs mode writes a Kaggle
``row_id,similarity`` submission.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.cli import (
    add_bool_flag,
    add_local_match,
    add_target_accuracy,
    add_workdir_args,
    cli_main,
    workspace_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search.py", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="*", help="image files or folders to identify")
    add_workdir_args(p)
    add_target_accuracy(p)
    add_local_match(p)
    p.add_argument("--top_k", type=int, default=5, help="matches to show per image")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--pairs", help="CSV row_id,query_image,gallery_image to score")
    p.add_argument("--images", dest="images_dir", help="folder of the pairs' images")
    p.add_argument("--out", default="submission.csv", help="where the pairs scores go")
    p.add_argument(
        "--rerank",
        choices=["none", "qe", "dba", "kr"],
        default="none",
        help="photos: qe averages the gallery and each photo with their neighbours (DBA + "
        "alpha-QE); pairs: re-rank the test-vs-test matrix, dba (each pair image averaged "
        "with its neighbours; 'qe' is accepted, its old name) or kr (k-reciprocal); "
        "parameters chosen on the val split",
    )
    add_bool_flag(
        p,
        "closed_set",
        "pairs: every image shows an individual of the gallery (as in Kaggle re-ID test sets); "
        "blend each score with the agreement of the two images' gallery class votes, "
        "parameters chosen on the val split (default: false)",
    )
    p.add_argument("--enroll", help="add a folder {class}/{ID}_{seq}.jpg or a manifest")
    p.add_argument("--image_root", help="folder the --enroll manifest's files are in")
    p.add_argument("--remove", metavar="CLASS", help="remove every gallery image of CLASS")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="flip TTA (off)")
    p.add_argument("--batch_size", type=int, default=64, help="embedding batch size")
    p.add_argument(
        "--onnx",
        help="answer with this ONNX model (python -m retrieval.export) and the saved "
        "gallery, without PyTorch (images and --pairs only)",
    )
    p.add_argument(
        "--rebuild_gallery",
        action="store_true",
        help="re-embed the gallery (the train split, then every enrolment and removal made)",
    )
    p.add_argument(
        "--gallery_versions", action="store_true", help="list the gallery versions kept on disk"
    )
    p.add_argument(
        "--restore_gallery", metavar="VERSION", help="go back to a gallery version kept on disk"
    )
    p.add_argument(
        "--keep_galleries",
        type=_positive,
        metavar="N",
        help="gallery versions each save keeps on disk (stored with the gallery; default 5)",
    )
    p.add_argument(
        "--explain",
        metavar="OUT.png",
        help="draw the one query photo beside its top match, verified keypoint matches as lines",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="the review page: send photos, check each answer beside its matches, confirm or "
        "correct it (applied to the gallery, logged in <workdir>/review/)",
    )
    p.add_argument("--port", type=int, help="--serve: the port (default 8765)")
    p.add_argument(
        "--host",
        help="--serve: the address to listen on (default 127.0.0.1, this machine only); any "
        "other needs the token the server prints",
    )
    p.add_argument(
        "--folder",
        action="append",
        metavar="DIR",
        help="--serve: a folder whose photos the page may review (repeat for several)",
    )
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _run(args: argparse.Namespace) -> int:
    from retrieval.errors import InputError

    if args.serve or args.port is not None or args.host or args.folder:
        return _serve(args)
    if args.gallery_versions or args.restore_gallery or args.keep_galleries:
        return _gallery_versions(args)
    if not (args.images or args.pairs or args.enroll or args.remove or args.rebuild_gallery):
        raise InputError(
            "give image files/folders to identify, --pairs CSV, --enroll PATH, --remove CLASS "
            "or --rebuild_gallery"
        )
    if not args.pairs and (args.rerank in ("kr", "dba") or args.closed_set):
        raise InputError(
            f"--rerank {args.rerank} and --closed_set score a --pairs CSV; add --pairs or drop "
            "them (photo searches take --rerank qe)"
        )
    if args.explain:
        _check_explain(args)
    if args.pairs:
        from retrieval.pairs import read_pairs

        read_pairs(Path(args.pairs))  # a damaged file is refused before the model loads
    workdir = Path(args.workdir)
    ws = _onnx_workspace(args, workdir) if args.onnx else workspace_from_args(args)
    if args.enroll or args.remove or not (args.images or args.pairs):
        return _change_gallery(ws, args)
    if args.pairs:
        from retrieval.pairs_query import choose_pair_options, score_pairs_file

        pairs = Path(args.pairs)
        images_dir = Path(args.images_dir) if args.images_dir else pairs.parent / "test"
        options = choose_pair_options(
            ws,
            rerank=args.rerank,
            closed_set=bool(args.closed_set),
            tune=not args.onnx,
            local_match=args.local_match,
        )
        for note in options.notes:
            print(note)
        summary = score_pairs_file(ws, pairs, images_dir, Path(args.out), options)
        print(
            f"wrote {args.out}: {summary.rows} pairs over {summary.images} images "
            f"(embedding {summary.embed_seconds:.1f} s, scoring {summary.score_seconds:.2f} s)"
        )
        return 0
    from retrieval.query import answer_images
    from retrieval.query_format import render

    expand = args.rerank == "qe"
    if expand:
        print(_expansion(ws, args, workdir).describe(), file=sys.stderr)
    answers = answer_images(
        ws, args.images, top_k=args.top_k, expand=expand, local=_local(ws, args, workdir, expand)
    )
    print(render(answers, args.format))
    if args.explain:
        from retrieval.report.explain import explain_answer, matching_settings

        settings, geometry = matching_settings(ws.gallery.fusion)
        explained = explain_answer(
            answers[0],
            Path(args.explain),
            settings=settings,
            geometry=geometry,
            foreground=ws.foreground,
        )
        # on stderr under --format json/csv, so that the answers stay machine-readable
        print(explained.describe(), file=sys.stdout if args.format == "table" else sys.stderr)
    return 1 if any(a.error for a in answers) else 0


def _serve(args: argparse.Namespace) -> int:
    """The review page (retrieval.review): flags checked before the model loads."""
    from retrieval.errors import InputError
    from retrieval.review.server import serve
    from retrieval.review.settings import DEFAULT_PORT, LOOPBACK, build_settings

    if not args.serve:
        raise InputError("--port, --host and --folder set up the review page: add --serve")
    others = [args.images, args.pairs, args.enroll, args.remove, args.explain, args.onnx]
    if any(others) or args.rerank != "none" or args.closed_set:
        raise InputError(
            "--serve answers the photos sent from the page: run photos, --pairs, --enroll, "
            "--remove, --explain, --onnx and --rerank without it"
        )
    settings = build_settings(
        host=args.host or LOOPBACK,
        port=DEFAULT_PORT if args.port is None else args.port,
        folders=args.folder or [],
        top_k=args.top_k,
        local_match=args.local_match,
    )
    serve(workspace_from_args(args), settings)
    return 0


def _check_explain(args: argparse.Namespace) -> None:
    """--explain draws one photo's best match: anything else is refused before the model loads."""
    from retrieval.errors import InputError

    if args.pairs or args.enroll or args.remove:
        got = "--pairs" if args.pairs else "--enroll" if args.enroll else "--remove"
    elif len(args.images) != 1:
        got = f"{len(args.images)} images"
    elif Path(args.images[0]).is_dir():
        got = f"the folder {args.images[0]}"
    else:
        return
    raise InputError(
        f"--explain draws one photo beside its best match, got {got}: give exactly one image "
        "file, e.g. search.py photo.jpg --explain match.png"
    )


def _onnx_workspace(args: argparse.Namespace, workdir: Path):
    """The torch-free path: an exported model and the gallery the checkpoint saved."""
    from retrieval.errors import InputError
    from retrieval.onnx_embed import open_onnx_workspace
    from retrieval.run_folder import current_run
    from retrieval.serving.gallery import GALLERY_FOLDER

    if args.enroll or args.remove or args.rebuild_gallery or args.tta != "none":
        raise InputError(
            "--onnx answers images and --pairs from the saved gallery; --enroll, --remove, "
            "--rebuild_gallery and --tta flip need the checkpoint: run them without --onnx"
        )
    return open_onnx_workspace(
        Path(args.onnx), current_run(workdir) / GALLERY_FOLDER, batch_size=args.batch_size
    )


def _expansion(ws, args: argparse.Namespace, workdir: Path):
    """The gallery's query expansion; chosen on the checkpoint's val split on first use."""
    from retrieval.calibration.gallery_policy import ensure_expansion

    return ensure_expansion(ws, _val_if(ws.gallery.expansion is None, ws, args, workdir))


def _val_if(needed: bool, ws, args: argparse.Namespace, workdir: Path):
    """The checkpoint's val split when a setting must still be chosen on it; None when it is
    stored already, or under --onnx (no torch to read the split with)."""
    if not needed or args.onnx:
        return None
    from retrieval.workspace import prepare_for

    return prepare_for(ws.loaded, workdir, data=None, image_root=None).val


def _local(ws, args: argparse.Namespace, workdir: Path, expand: bool):
    """What ``--local_match`` re-scores a search with: the gallery's fusion, chosen on the
    checkpoint's val split on first use (printed on stderr, so JSON output stays clean)."""
    from retrieval.calibration.local_policy import search_local

    return search_local(
        ws,
        local_match=args.local_match,
        read_val=lambda: _val_if(True, ws, args, workdir),
        expand=expand,
        report=lambda note: print(note, file=sys.stderr),
    )


def _change_gallery(ws, args: argparse.Namespace) -> int:
    from retrieval.enroll import enroll, format_enroll, remove

    if args.enroll:
        root = Path(args.image_root) if args.image_root else None
        print(format_enroll(enroll(ws, Path(args.enroll), image_root=root)))
    if args.remove:
        removed, note = remove(ws, args.remove)
        print(f"removed {removed} image(s) of {args.remove}\n{note}")
    print(f"gallery: {ws.gallery.size} images, {len(ws.gallery.class_names)} classes")
    return 0


def _gallery_versions(args: argparse.Namespace) -> int:
    """List the kept gallery versions, go back to one, or set how many are kept: no model
    needed, the gallery files alone."""
    from retrieval.run_folder import current_run
    from retrieval.serving.gallery import Gallery
    from retrieval.serving.versions import describe_versions, restore_version
    from retrieval.workspace import gallery_root

    workdir = Path(args.workdir)
    root = gallery_root(current_run(workdir), args.tta)
    if args.restore_gallery:
        print(restore_version(workdir, root, args.restore_gallery))
    if args.keep_galleries:
        gallery = Gallery.load(root)
        gallery.keep_versions = args.keep_galleries
        gallery.save(root)
        print(f"each gallery save now keeps the last {args.keep_galleries} version(s)")
    print(describe_versions(root))
    return 0


def _run_locked(args: argparse.Namespace) -> int:
    """--enroll, --remove, --rebuild_gallery and the version changes write the gallery: one
    writer per workdir."""
    writes = args.enroll or args.remove or args.rebuild_gallery
    if not (writes or args.restore_gallery or args.keep_galleries):
        return _run(args)
    from retrieval.workdir_lock import command_line, workdir_lock

    with workdir_lock(Path(args.workdir), command_line("search.py")):
        return _run(args)


def main(argv: list[str] | None = None) -> int:
    return cli_main("search.py", build_parser, _run_locked, argv)


if __name__ == "__main__":
    sys.exit(main())
