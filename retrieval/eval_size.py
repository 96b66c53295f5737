"""The inference image size, chosen on the val split after training (``--eval_size auto``).

Why: a training crop (RandomResizedCrop, 80-100 % of the photo) shows a face larger than the
eval transform's full centre crop at the same size, so a model trained at 224 px meets test
faces smaller than it learnt them; embedding at a somewhat larger size undoes that (Touvron et
al., "Fixing the train-test resolution discrepancy", NeurIPS 2019). Measured on the whole of
DogFaceNet (bench/RESULTS.md): val mAP 0.816 at the train size, 0.829 at 256 px.

The train size is always a candidate and the first one scored; a larger size is taken only
when val mAP (val queries against the train photos, as a search runs) is strictly higher, so
a model that gains nothing keeps its train size. Sizes are scored from small to large and
the search stops at the first that scores lower than the one before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from retrieval.data.records import ImageRecord, labels_of
from retrieval.data.transforms import build_eval_transform
from retrieval.device import RuntimePlan
from retrieval.embed import extract_embeddings
from retrieval.metrics import evaluate_retrieval

SCALES = (1.0, 1.07, 1.14, 1.21, 1.29)  # candidates as multiples of the training size
SIZE_STEP = 8  # candidates are rounded to a multiple of this


def candidate_sizes(train_size: int) -> list[int]:
    """Image sizes to try, ascending, the train size first: 224 -> 224, 240, 256, 272, 288."""
    sizes = [train_size]
    for scale in SCALES[1:]:
        size = round(train_size * scale / SIZE_STEP) * SIZE_STEP
        if size > sizes[-1]:
            sizes.append(size)
    return sizes


@dataclass(frozen=True)
class EvalSizeChoice:
    """What val chose and the val mAP of each size scored (sizes never scored are absent)."""

    size: int
    train_size: int
    val_map: dict[int, float]
    reason: str = ""  # why no choice was made (too few val photos); empty when val chose

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "train_size": self.train_size,
            "val_map": {str(k): v for k, v in self.val_map.items()},
            "reason": self.reason,
        }

    def describe(self) -> str:
        """One line for the training log."""
        if self.reason:
            return f"eval size: {self.size} px (the train size): {self.reason}"
        scored = ", ".join(f"{s} px {m:.3f}" for s, m in self.val_map.items())
        return f"eval size: {self.size} px, chosen on val mAP ({scored})"


def choose_eval_size(
    model: torch.nn.Module,
    train: Sequence[ImageRecord],
    val: Sequence[ImageRecord],
    class_to_idx: dict[str, int],
    *,
    train_size: int,
    plan: RuntimePlan,
    batch_size: int = 64,
    progress: bool = True,
) -> EvalSizeChoice:
    """The size with the best val mAP, searching the train photos (see the module doc)."""
    known = [r for r in val if r.label in class_to_idx]
    if len(known) < 2 or not train:
        reason = f"{len(known)} val photo(s) of trained individuals, too few to choose"
        return EvalSizeChoice(train_size, train_size, {}, reason)
    gallery_labels, val_labels = labels_of(train, class_to_idx), labels_of(known, class_to_idx)
    scores: dict[int, float] = {}
    for size in candidate_sizes(train_size):
        common = dict(
            transform=build_eval_transform(size),
            plan=plan,
            batch_size=batch_size,
            progress=progress,
        )
        gallery = extract_embeddings(model, train, desc=f"eval size {size}: train", **common)
        queries = extract_embeddings(model, known, desc=f"eval size {size}: val", **common)
        scores[size] = evaluate_retrieval(queries, val_labels, gallery, gallery_labels).map
        if len(scores) > 1 and scores[size] < list(scores.values())[-2]:
            break
    best = max(scores, key=lambda s: (scores[s], -s))  # ties: the smaller size
    return EvalSizeChoice(best, train_size, {s: float(m) for s, m in scores.items()})


def inference_size(state: dict) -> int:
    """The size a checkpoint embeds at: val's choice where one was stored, else the train size."""
    return int(state.get("eval_image_size", state["image_size"]))


def store_choice(state: dict, choice: EvalSizeChoice) -> dict:
    """``state`` (a checkpoint dict) with the choice recorded; the weights are not touched."""
    return {**state, "eval_image_size": choice.size, "eval_size": choice.to_dict()}
