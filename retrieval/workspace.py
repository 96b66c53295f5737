"""What evaluation and search share: a loaded model and its gallery, built once and reused.

The gallery holds the train-split embeddings of a checkpoint. It is built at the end of
training or on first use, with reject thresholds calibrated on the validation split, and is
reused as long as the checkpoint (and TTA mode) match.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retrieval.config import RunConfig
from retrieval.data.prepare import PreparedData, prepare_data
from retrieval.data.records import labels_of
from retrieval.data.transforms import build_eval_transform
from retrieval.decision import TARGET_ACCURACY, VOTE_TOP_N, Thresholds, calibrate_thresholds
from retrieval.device import RuntimePlan, apply_runtime, plan_runtime, probe_device
from retrieval.embed import extract_embeddings
from retrieval.gallery import GALLERY_FOLDER, Gallery, gallery_exists
from retrieval.inference import LoadedModel, load_inference_model


@dataclass(frozen=True)
class Workspace:
    workdir: Path
    plan: RuntimePlan
    loaded: LoadedModel
    gallery: Gallery
    tta: str
    batch_size: int

    @property
    def gallery_root(self) -> Path:
        return gallery_root(self.workdir, self.tta)

    def embed(
        self, records, *, desc: str = "embedding", progress: bool = True, timer=None
    ) -> np.ndarray:
        """Embed records exactly as the gallery was embedded: (N, D) float32 unit rows."""
        return extract_embeddings(
            self.loaded.model,
            records,
            transform=build_eval_transform(self.loaded.image_size),
            plan=self.plan,
            batch_size=self.batch_size,
            tta=self.tta,
            progress=progress,
            desc=desc,
            timer=timer,
        )


def inference_plan(device: str = "auto") -> RuntimePlan:
    """The hardware plan for inference (same decisions as training, no overrides)."""
    plan = plan_runtime(probe_device(device=device))
    apply_runtime(plan)
    return plan


def gallery_root(workdir: Path, tta: str) -> Path:
    """``<workdir>/gallery``; a flip-TTA gallery lives beside it, so neither replaces the other."""
    return workdir / (GALLERY_FOLDER if tta == "none" else f"{GALLERY_FOLDER}_tta_{tta}")


def gallery_fingerprint(loaded: LoadedModel, tta: str) -> str:
    return f"{loaded.fingerprint}:tta={tta}"


def prepare_for(loaded: LoadedModel, workdir: Path, *, data: str | None, image_root: str | None):
    """The checkpoint's data, split as stored under ``workdir`` (never re-split)."""
    cfg = RunConfig.from_dict(loaded.config)
    d = cfg.data
    if data is not None:
        d = replace(d, data=data, image_root=image_root)
    return prepare_data(
        Path(d.data),
        workdir,
        image_root=Path(d.image_root) if d.image_root else None,
        min_size=d.min_size,
        seed=d.seed,
    )


def build_gallery(
    loaded: LoadedModel,
    prepared: PreparedData,
    *,
    plan: RuntimePlan,
    tta: str,
    batch_size: int,
    progress: bool = True,
) -> Gallery:
    """Embed the train split into a gallery; calibrate reject thresholds on the val split."""
    common = dict(
        transform=build_eval_transform(loaded.image_size),
        plan=plan,
        batch_size=batch_size,
        tta=tta,
        progress=progress,
    )
    gallery_embeddings = extract_embeddings(loaded.model, prepared.train, desc="gallery", **common)
    gallery = Gallery.build(
        gallery_embeddings,
        labels_of(prepared.train, loaded.class_to_idx),
        [str(r.path) for r in prepared.train],
        class_names=loaded.class_names,
        fingerprint=gallery_fingerprint(loaded, tta),
        use_gpu=None,
    )
    gallery.thresholds = _calibrate(gallery, loaded, prepared, common)
    return gallery


def _calibrate(gallery: Gallery, loaded: LoadedModel, prepared: PreparedData, common) -> Thresholds:
    known = [r for r in prepared.val if r.label in loaded.class_to_idx]
    if not known:
        return Thresholds()
    queries = extract_embeddings(loaded.model, known, desc="calibration", **common)
    hits = gallery.search(queries, VOTE_TOP_N)
    truth = labels_of(known, loaded.class_to_idx)
    calibration = calibrate_thresholds(
        hits.labels,
        hits.result.distances,
        truth,
        target_accuracy=TARGET_ACCURACY,
        top_n=VOTE_TOP_N,
    )
    gallery.history.append(
        {
            "event": "calibrate",
            "queries": len(known),
            "target_accuracy": TARGET_ACCURACY,
            "accuracy": calibration.accuracy,
            "coverage": calibration.coverage,
            "met_target": calibration.met_target,
        }
    )
    return calibration.thresholds


def open_workspace(
    workdir: Path,
    checkpoint: Path,
    *,
    tta: str = "none",
    batch_size: int = 64,
    data: str | None = None,
    image_root: str | None = None,
    rebuild: bool = False,
    progress: bool = True,
    device: str = "auto",
) -> Workspace:
    """Load the model and its gallery, building (and saving) the gallery when needed."""
    plan = inference_plan(device)
    loaded = load_inference_model(checkpoint, plan)
    root = gallery_root(workdir, tta)
    if gallery_exists(root) and not rebuild:
        gallery = Gallery.load(root, expected_fingerprint=gallery_fingerprint(loaded, tta))
    else:
        prepared = prepare_for(loaded, workdir, data=data, image_root=image_root)
        gallery = build_gallery(
            loaded, prepared, plan=plan, tta=tta, batch_size=batch_size, progress=progress
        )
        gallery.save(root)
    return Workspace(workdir, plan, loaded, gallery, tta, batch_size)
