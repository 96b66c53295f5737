"""Score the Kaggle pairs path on labels held out from train.csv (identity-balanced mAP).

The competition's test labels are secret, so the held-out check uses the workdir's own test
split of train.csv: every ordered pair of its images goes through ``search.py --pairs`` (the
exact submission path), and the submission is scored against the known labels.

    python train.py --data ../shared/data/dogs_kaggle/train.csv \
        --image_root ../shared/data/dogs_kaggle/train --workdir runs/kaggle ...
    python bench/kaggle_holdout.py --workdir runs/kaggle
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.device import prepare_environment


def main(argv: list[str] | None = None) -> int:
    prepare_environment()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--tta", choices=["none", "flip"], default="none")
    p.add_argument("--rerank", choices=["none", "dba", "qe", "kr"], default="none")
    p.add_argument("--closed_set", action="store_true", help="blend in the gallery's class votes")
    args = p.parse_args(argv)

    import pandas as pd

    from retrieval.cli import default_checkpoint
    from retrieval.kaggle_score import holdout_pairs, identity_balanced_map
    from retrieval.pairs_query import choose_pair_options, score_pairs_file
    from retrieval.workspace import open_workspace, prepare_for

    workdir = Path(args.workdir)
    ws = open_workspace(workdir, default_checkpoint(workdir, args.checkpoint), tta=args.tta)
    prepared = prepare_for(ws.loaded, workdir, data=None, image_root=None)
    records = prepared.test if args.split == "test" else prepared.val
    images_dir = records[0].path.parent
    labels = {r.path.name: r.label for r in records}
    pairs = holdout_pairs(sorted(labels))
    results = workdir / "results"
    results.mkdir(parents=True, exist_ok=True)
    pairs_csv, submission = results / "holdout_pairs.csv", results / "holdout_submission.csv"
    pairs.to_csv(pairs_csv, index=False)
    options = choose_pair_options(ws, rerank=args.rerank, closed_set=args.closed_set)
    summary = score_pairs_file(ws, pairs_csv, images_dir, submission, options)
    similarity = pd.read_csv(submission)["similarity"].to_numpy()
    ib_map, per_identity = identity_balanced_map(pairs, similarity, labels)
    result = {
        "split": args.split,
        "images": summary.images,
        "pairs": summary.rows,
        "identities": len(per_identity),
        "identity_balanced_map": round(ib_map, 4),
        "worst_identity_ap": round(min(per_identity.values()), 4),
        "tta": args.tta,
        "rerank": args.rerank,
        "rerank_params": options.rerank_params,
        "closed_set": options.closed_set and options.closed_set.params,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
