"""Evaluate a trained model: ``python evaluate.py --split test`` (SPEC 4).

Gallery = train split (the saved gallery), queries = the chosen split. Prints Recall@1/5, mAP,
identity-balanced mAP and how the product's answers do (the rule chosen on val, accuracy,
coverage at the target accuracy, AURC, ECE); writes results/ and figures.
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
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    add_workdir_args(p)
    add_target_accuracy(p)
    add_local_match(p)
    p.add_argument("--split", choices=["val", "test"], default="test", help="query split")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="flip TTA (off)")
    p.add_argument(
        "--rerank",
        choices=["none", "qe"],
        default="none",
        help="qe: database-side augmentation of the gallery plus alpha query expansion, "
        "neighbour count chosen on the val split (once; stored with the gallery)",
    )
    p.add_argument("--data", help="data folder/manifest if it moved since training")
    p.add_argument("--image_root", help="image folder of a moved manifest")
    p.add_argument("--batch_size", type=int, default=64, help="embedding batch size")
    add_bool_flag(p, "figures", "save figures under results/figures (default true)")
    p.add_argument("--rebuild_gallery", action="store_true", help="re-embed the gallery")
    p.add_argument(
        "--open_set",
        action="store_true",
        help="calibrate new-individual detection on val (stored with the gallery) and report it",
    )
    p.add_argument("--target_far", type=float, default=0.05, help="open set: false-accept target")
    p.add_argument(
        "--open_set_fraction", type=float, default=0.2, help="share of val classes held out"
    )
    p.add_argument(
        "--flip_check",
        action="store_true",
        help="measure whether mirrored photos keep their identity on the split and recommend "
        "flip augmentation / flip TTA (run it on --split val)",
    )
    return p


def _run(args: argparse.Namespace) -> int:
    from retrieval.calibration.local_policy import local_queries
    from retrieval.calibration.policy import describe_policy
    from retrieval.evaluation import evaluate_split, format_report, write_outputs
    from retrieval.report.selective import outcomes, write_selective
    from retrieval.workspace import prepare_for

    workdir = Path(args.workdir)
    ws = workspace_from_args(args, data=args.data, image_root=args.image_root)
    prepared = prepare_for(ws.loaded, workdir, data=args.data, image_root=args.image_root)
    if ws.loaded.served_note:
        print(ws.loaded.served_note)
    queries = prepared.val if args.split == "val" else prepared.test
    if args.rerank == "qe":
        from retrieval.calibration.gallery_policy import ensure_expansion

        print(ensure_expansion(ws, prepared.val).describe())
        if args.split == "val":
            print("  note: val chose these parameters, so its figures below are optimistic")
    expand = args.rerank == "qe"

    def local(paths: list[str]):
        chosen, note = local_queries(
            ws, paths, local_match=args.local_match, val=prepared.val, expand=expand
        )
        if note:
            print(note)
        return chosen

    report, arrays = evaluate_split(ws, queries, split=args.split, expand=expand, local=local)
    print(describe_policy(report.policy))  # the one applied: global, or on the fused scores
    results = workdir / "results"
    figures = results / "figures" if args.figures is not False else None
    files = write_outputs(ws, report, results)
    files += write_selective(
        *outcomes(report.decisions, report.truth), results, figures, args.split
    )
    if figures is not None:
        from retrieval.data.images import load_rgb
        from retrieval.report.figures import save_figures

        files += save_figures(
            figures,
            split=args.split,
            class_names=ws.gallery.class_names,
            per_class_ap=report.metrics.per_class_ap,
            confusion_pairs=report.confusions,
            image_loader=load_rgb,
            **arrays,
        )
    print(format_report(report, report.policy))
    if args.open_set:
        files += _open_set(ws, prepared, queries, args, results, figures)
    if args.flip_check:
        files.append(_flip_check(ws, [*prepared.train, *queries], args.split, results))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _open_set(ws, prepared, queries, args: argparse.Namespace, results: Path, figures):
    """The check on the evidence ``--local_match`` applies to plain searches (the global
    check is chosen and stored as well)."""
    from retrieval.calibration.local_policy import applied_fusion
    from retrieval.config import RunConfig
    from retrieval.open_set_report import format_open_set_report
    from retrieval.open_set_run import describe_path, run_open_set, save_open_set
    from retrieval.report.selective import format_selective

    settings = {
        "fraction": args.open_set_fraction,
        "target_far": args.target_far,
        "seed": RunConfig.from_dict(ws.loaded.config).data.seed,
    }
    fusion, _ = applied_fusion(ws, local_match=args.local_match, val=prepared.val)
    run = run_open_set(
        ws, val=prepared.val, queries=queries, split=args.split, fusion=fusion, **settings
    )
    print(describe_path(run, ws.gallery.fusion))
    print(format_open_set_report(run.report))
    print(format_selective(run.selective, run.policy))
    return save_open_set(
        ws,
        run,
        split=args.split,
        results=results,
        figures=figures,
        local_match=args.local_match,
        **settings,
    )


def _flip_check(ws, records, split: str, results: Path) -> Path:
    """Mirror check on train + the split: every photo of the split finds its train photos."""
    from retrieval.flips import flip_check, flip_check_summary
    from retrieval.io import write_json_atomic

    report, policy = flip_check(
        ws.loaded.model,
        records,
        ws.loaded.class_to_idx,
        image_size=ws.loaded.image_size,
        plan=ws.plan,
        batch_size=ws.batch_size,
    )
    summary = flip_check_summary(
        report,
        policy,
        measured_on=f"train+{split}",
        trained_with_flips=ws.loaded.config.get("data", {}).get("hflip", True),
    )
    path = results / "flip_check.json"
    write_json_atomic(path, summary)
    print(f"flip check ({summary['split']}): {policy.reason}\n  -> {policy.flags()}")
    if summary["caveat"]:
        print(f"  note: {summary['caveat']}")
    return path


def _run_locked(args: argparse.Namespace) -> int:
    """--rebuild_gallery and --open_set write the gallery: one writer per workdir."""
    if not (args.rebuild_gallery or args.open_set):
        return _run(args)
    from retrieval.workdir_lock import command_line, workdir_lock

    with workdir_lock(Path(args.workdir), command_line("evaluate.py")):
        return _run(args)


def main(argv: list[str] | None = None) -> int:
    return cli_main("evaluate.py", build_parser, _run_locked, argv)


if __name__ == "__main__":
    sys.exit(main())
