"""A gallery's local-match fusion: chosen once on its val photos, stored, and applied as
``--local_match`` says (auto: only where val scored it above global only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from retrieval.calibration.fusion_fit import SHORTLISTS, choose_fusion_setting, describe_fusion
from retrieval.calibration.gallery_policy import EmbeddingGallery, val_queries
from retrieval.data.records import ImageRecord
from retrieval.errors import InputError
from retrieval.local.features import FOREGROUNDS, LocalSettings
from retrieval.serving.evidence import gallery_evidence
from retrieval.serving.fusion import MAX_KEYPOINTS, Fusion
from retrieval.serving.gallery import Gallery
from retrieval.serving.local_scores import LocalQueries, LocalScorer

LOCAL_MODES = ("auto", "on", "off")
REFIT_SHARE = 0.1  # a gallery changed by more than this share gets its fusion fitted again


def choose_gallery_fusion(
    ws: EmbeddingGallery,
    val: Sequence[ImageRecord],
    *,
    foregrounds: Sequence[str] = FOREGROUNDS,
    progress: bool = True,
) -> Fusion | None:
    """Fit the fusion on the val photos of the gallery's individuals (None: fewer than 2).

    Candidates: keypoints everywhere or on the model's foreground estimate (``foregrounds``;
    the estimate only where the workspace can draw it) x each geometric model, each matched
    once per foreground and verified every way."""
    gallery = ws.gallery
    known = val_queries(gallery, list(val))
    if len(known) < 2 or gallery.size == 0:
        return None
    embeddings = ws.embed(known, desc="val (local matching)")
    truth = np.array([gallery.class_index(r.label) for r in known], dtype=np.int64)
    evidence, hits = gallery_evidence(gallery, embeddings, need_means=True)
    paths = [str(r.path) for r in known]
    inliers: dict[tuple[str, str], np.ndarray] = {}
    for foreground in foregrounds:
        if foreground != "none" and ws.foreground is None:
            continue
        scorer = LocalScorer(
            ws.gallery_root,
            LocalSettings(max_keypoints=MAX_KEYPOINTS, foreground=foreground),
            progress=progress,
            foreground=ws.foreground,
        )
        ways = scorer.inliers_ways(scorer.query_features(paths), hits.paths, max(SHORTLISTS))
        inliers.update(((foreground, geometry), counts) for geometry, counts in ways.items())
    target = gallery.policy_for(expand=False).target_accuracy
    fusion = choose_fusion_setting(evidence, inliers, truth, target_accuracy=target)
    return replace(fusion, evidence={**fusion.evidence, "gallery_items": gallery.size})


def fusion_still_fits(fusion: Fusion, gallery: Gallery) -> bool:
    """Whether a fusion fitted on val still serves the gallery after enrolments or removals:
    its curves map a cosine and an inlier count to P(same), which a few photos more or less
    hardly move, so it is fitted again only once the gallery has changed by more than
    ``REFIT_SHARE`` of its size (a review session then pays for one fit, not one a photo)."""
    fitted = fusion.evidence.get("gallery_items")
    return bool(fitted) and abs(gallery.size - fitted) <= REFIT_SHARE * fitted


def ensure_fusion(
    ws: EmbeddingGallery, val: Sequence[ImageRecord] | None, *, progress: bool = True
) -> Fusion | None:
    """The gallery's stored fusion, or one chosen on ``val`` now and saved with the gallery;
    None when val cannot choose one (``val`` None: the caller cannot read it, e.g. ONNX)."""
    gallery = ws.gallery
    if gallery.fusion is not None or val is None:
        return gallery.fusion
    fusion = choose_gallery_fusion(ws, val, progress=progress)
    if fusion is not None:
        gallery.set_fusion(fusion)
        gallery.save_if_free(ws.gallery_root, ws.workdir)
    return fusion


def applied_fusion(
    ws: EmbeddingGallery,
    *,
    local_match: str,
    val: Sequence[ImageRecord] | None,
    expand: bool = False,
    progress: bool = True,
) -> tuple[Fusion | None, str]:
    """The gallery's fusion where ``--local_match`` applies it (else None), with a line
    saying what was applied and why."""
    if local_match not in LOCAL_MODES:
        raise InputError(f"--local_match {local_match!r}: choose one of {', '.join(LOCAL_MODES)}")
    if local_match == "off":
        return None, ""
    if expand:
        return None, "local matching: off with --rerank qe (fused with plain searches only)"
    fusion = ensure_fusion(ws, val, progress=progress)
    if fusion is None:
        if local_match == "on":
            raise InputError(
                "--local_match on: this gallery has no local-match calibration and none can "
                "be fitted (fewer than 2 val photos of its individuals, or --onnx); use "
                "--local_match off"
            )
        return None, "local matching: off (no val photos to calibrate it on)"
    note = describe_fusion(fusion, local_match)
    if local_match == "auto" and not fusion.helps:
        return None, note
    return fusion, note


def local_queries(
    ws: EmbeddingGallery,
    paths: Sequence[str],
    *,
    local_match: str,
    val: Sequence[ImageRecord] | None,
    expand: bool = False,
    progress: bool = True,
) -> tuple[LocalQueries | None, str]:
    """What a photo search passes to ``decide_in_gallery`` under ``--local_match``, with a
    line saying what was applied and why."""
    fusion, note = applied_fusion(
        ws, local_match=local_match, val=val, expand=expand, progress=progress
    )
    if fusion is None:
        return None, note
    return LocalQueries(
        list(paths), ws.gallery_root, progress=progress, foreground=ws.foreground
    ), note


def search_local(
    ws: EmbeddingGallery,
    *,
    local_match: str,
    read_val: Callable[[], Sequence[ImageRecord] | None],
    expand: bool = False,
    report: Callable[[str], None] = print,
    progress: bool = True,
) -> Callable[[list[str]], LocalQueries | None]:
    """What a photo search (``search.py``, the review page) passes to ``answer_images``:
    given the readable photos, the local queries ``--local_match`` applies. ``read_val`` is
    called only when a fusion must still be chosen on val; ``report`` gets the line saying
    what was applied."""

    def chosen(paths: list[str]) -> LocalQueries | None:
        needed = ws.gallery.fusion is None and local_match != "off"
        local, note = local_queries(
            ws,
            paths,
            local_match=local_match,
            val=read_val() if needed else None,
            expand=expand,
            progress=progress,
        )
        if note:
            report(note)
        return local

    return chosen
