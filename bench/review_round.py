"""One correction round on the demo through the review page's API (issue 37), measured.

A field user's loop: new sightings of known individuals arrive; they are answered on the review
page in one go (a folder), a person confirms the right answers and files the wrong or declined
ones under the right individual; the gallery grows with them at once, and the next training
run learns from them (``train.py --fresh --corrections``). Measured on the workdir's *test*
split, which none of this touches: Recall@1 and decision accuracy before the round, after it
(same model, grown gallery) and after retraining with the corrections.

The sightings are new encounters of the demo's individuals, drawn by the demo's own generator
(encounters after the ten the demo data holds: new poses, backgrounds and light). Val photos
are not used: a person confirming a val photo does not move it out of val (the splits stay
the ones the figures are comparable on), so correcting val would teach the next run nothing.

    python train.py --fresh --preset demo --workdir runs/review/demo
    python bench/review_round.py --workdir runs/review/demo --json runs/review/round.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient

import evaluate
import train
from retrieval.cli import default_checkpoint
from retrieval.data.demo import DemoSpec
from retrieval.data.demo_images import draw_animal, render_shot, sample_scene, stream_rng
from retrieval.review.app import create_app
from retrieval.review.settings import ReviewSettings
from retrieval.workspace import open_workspace


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a workdir trained with --preset demo")
    p.add_argument("--sightings", type=int, default=3, help="new encounters per individual")
    p.add_argument("--json", help="write the results here too")
    return p


def draw_sightings(folder: Path, n: int) -> dict[str, str]:
    """``n`` new encounters of each demo individual, one photo each, under names that say
    nothing of who is on them; returns photo path -> individual."""
    spec = DemoSpec()  # the demo preset's data set
    folder.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(spec.n_individuals - 1)))
    truth = {}
    for i in range(spec.n_individuals):
        animal = draw_animal(stream_rng(spec.seed, i))
        for e in range(spec.encounters_per_individual, spec.encounters_per_individual + n):
            rng = stream_rng(spec.seed, i, e + 1)
            image = render_shot(
                animal, sample_scene(rng, spec.image_size), rng, size=spec.image_size
            )
            path = folder / f"sighting_{len(truth):04d}.jpg"
            image.save(path, quality=90)
            truth[str(path.resolve())] = f"ind_{i:0{width}d}"
    return truth


def test_figures(workdir: Path) -> dict[str, float]:
    """evaluate.py on the test split, as a user runs it; its metrics file read back."""
    assert evaluate.main(["--workdir", str(workdir), "--split", "test", "--figures=false"]) == 0
    metrics = json.loads((workdir / "results" / "test_metrics.json").read_text())
    return {
        "recall_at_1": metrics["recall_at_1"],
        "map": metrics["map"],
        "decision_accuracy": metrics["decision"]["accuracy_at_full_coverage"],
        "coverage_at_target": metrics["decision"]["coverage_at_target"],
        "gallery": metrics["n_gallery"],
    }


def review(workdir: Path, folder: Path, truth: dict[str, str]) -> dict:
    """Answer the folder on the review page and file every answer as a person would."""
    ws = open_workspace(workdir, default_checkpoint(workdir, None), progress=False)
    app = create_app(ws, ReviewSettings(folders=(folder.resolve(),)))
    client = TestClient(app, base_url="http://127.0.0.1:8765", follow_redirects=False)
    started = time.perf_counter()
    response = client.post("/folder", data={"folder": str(folder.resolve())})
    assert response.status_code < 400, response.text[-500:]
    answered = time.perf_counter() - started
    items = sorted(app.state.review.book.queue(), key=lambda item: item.photo)
    counts = {"accepted right": 0, "accepted wrong": 0, "declined": 0}
    started = time.perf_counter()
    for item in items:
        right = truth[item.photo]
        accepted = item.answer.class_name
        if accepted == right:
            counts["accepted right"] += 1
            form = {"action": "confirm"}
        else:
            counts["accepted wrong" if accepted else "declined"] += 1
            form = {"action": "choose", "name": right}
        response = client.post(f"/answers/{item.id}/action", data=form)
        assert response.status_code < 400, response.text[-500:]
    filed = time.perf_counter() - started
    return {
        "photos": len(items),
        **counts,
        "answer_seconds_per_photo": round(answered / max(len(items), 1), 2),
        "file_seconds_per_photo": round(filed / max(len(items), 1), 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir).resolve()
    before = test_figures(workdir)
    folder = workdir / "review_round" / "sightings"
    truth = draw_sightings(folder, args.sightings)
    round_ = review(workdir, folder, truth)
    after_round = test_figures(workdir)
    argv = ["--workdir", str(workdir), "--preset", "demo", "--fresh", "--corrections", str(workdir)]
    assert train.main(argv) == 0
    retrained = test_figures(workdir)
    result = {
        "sightings_per_individual": args.sightings,
        "review": round_,
        "test_before": before,
        "test_after_review": after_round,
        "test_after_retraining": retrained,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
