"""What evaluation and search share: a loaded model and its gallery, built once and reused.

The gallery holds the train-split embeddings of a checkpoint. It is built at the end of
training or on first use, with its decision policy chosen on the validation split, and is
reused as long as the checkpoint (and TTA mode) match.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrieval import checkpoint as ckpt
from retrieval.calibration.gallery_policy import (
    CHECK_DROPPED,
    choose_gallery_policy,
    set_gallery_policy,
    val_queries,
)
from retrieval.calibration.local_policy import fusion_still_fits
from retrieval.config import RunConfig
from retrieval.data.prepare import PreparedData, prepare_data
from retrieval.data.records import ImageRecord, labels_of
from retrieval.data.transforms import build_eval_transform
from retrieval.device import RuntimePlan, apply_runtime, plan_runtime, probe_device
from retrieval.embed import extract_embeddings
from retrieval.errors import InputError
from retrieval.inference import LoadedModel, load_inference_model
from retrieval.model.saliency import BackboneSaliency
from retrieval.run_folder import checkpoints_dir, current_run
from retrieval.serving.decide import TARGET_ACCURACY
from retrieval.serving.gallery import (
    GALLERY_FOLDER,
    Gallery,
    gallery_exists,
    stored_fingerprint,
)
from retrieval.serving.journal import journal_path
from retrieval.serving.replay import catch_up, seed_entries, seed_journal
from retrieval.workdir_lock import may_write


@dataclass(frozen=True)
class Workspace:
    workdir: Path
    plan: RuntimePlan
    loaded: LoadedModel
    gallery: Gallery
    tta: str
    batch_size: int
    run: Path | None = None  # the run folder whose gallery this is; None: the current run
    # vectors already computed, by (path, size, mtime): the val photos, embedded again each
    # time an enrolment re-chooses the policy, cost nothing the second time
    _vectors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def gallery_root(self) -> Path:
        return gallery_root(self.run or current_run(self.workdir), self.tta)

    @property
    def foreground(self) -> BackboneSaliency:
        """Where this model sees the animal, for local matching on photos without alpha."""
        return BackboneSaliency(
            self.loaded.model, self.plan, self.loaded.image_size, self.loaded.fingerprint
        )

    def embed(
        self, records, *, desc: str = "embedding", progress: bool = True, timer=None
    ) -> np.ndarray:
        """Embed records exactly as the gallery was embedded: (N, D) float32 unit rows.
        Photos this workspace embedded before (same file, unchanged) are not embedded again,
        except under a ``timer`` (a measurement of the embedding itself)."""
        keys = [None if timer else _file_key(r.path) for r in records]
        todo = [r for r, key in zip(records, keys, strict=True) if key not in self._vectors]
        fresh = iter(())
        if todo:
            fresh = iter(
                extract_embeddings(
                    self.loaded.model,
                    todo,
                    transform=build_eval_transform(self.loaded.image_size),
                    plan=self.plan,
                    batch_size=self.batch_size,
                    tta=self.tta,
                    progress=progress,
                    desc=desc,
                    timer=timer,
                )
            )
        rows = [self._vectors[k] if k in self._vectors else next(fresh) for k in keys]
        self._vectors.update((k, v) for k, v in zip(keys, rows, strict=True) if k)
        # a copy: what the caller does with it never reaches the kept vectors
        dim = self.loaded.model.embedding_dim
        return np.array(rows, dtype=np.float32).reshape(len(rows), dim)


def _file_key(path: Path) -> tuple | None:
    """What identifies a photo's pixels cheaply: path, size and modification time."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns


def inference_plan(device: str = "auto") -> RuntimePlan:
    """The hardware plan for inference (same decisions as training, no overrides)."""
    plan = plan_runtime(probe_device(device=device))
    apply_runtime(plan)
    return plan


def gallery_root(run: Path, tta: str) -> Path:
    """``<run>/gallery``; a flip-TTA gallery lives beside it, so neither replaces the other."""
    return run / (GALLERY_FOLDER if tta == "none" else f"{GALLERY_FOLDER}_tta_{tta}")


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
    workdir: Path,
    *,
    plan: RuntimePlan,
    tta: str,
    batch_size: int,
    progress: bool = True,
    target_accuracy: float = TARGET_ACCURACY,
) -> Gallery:
    """Embed the train split into a gallery, replay the workdir's enrolment journal into it
    (printing what it replayed), and choose its decision policy on the val split."""
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

    def embed(records: list[ImageRecord], desc: str) -> np.ndarray:
        return extract_embeddings(loaded.model, records, desc=desc, **common)

    replayed = catch_up(gallery, workdir, embed, min_size=_min_size(loaded))
    if replayed is not None and replayed.entries:  # on stderr: --format json stays clean
        print(replayed.describe(journal_path(workdir)), file=sys.stderr, flush=True)
    choose_policy_on_val(
        gallery, prepared.val, embed, why="gallery built", target_accuracy=target_accuracy
    )
    return gallery


def choose_policy_on_val(
    gallery: Gallery,
    val: list[ImageRecord],
    embed: Callable[[list[ImageRecord], str], np.ndarray],
    *,
    why: str,
    target_accuracy: float = TARGET_ACCURACY,
) -> str:
    """Embed (``embed(records, desc)``, as the gallery was) the val photos of the gallery's
    individuals and store the policy they choose (kept as it is when val has fewer than 2
    such photos); returns a note, or ""."""
    known = val_queries(gallery, val)
    if len(known) < 2:
        return ""
    queries = embed(known, "val (decision rule)")
    truth = np.array([gallery.class_index(r.label) for r in known], dtype=np.int64)
    policy = choose_gallery_policy(gallery, queries, truth, target_accuracy=target_accuracy)
    return set_gallery_policy(gallery, policy, why=why)


def _min_size(loaded: LoadedModel) -> int:
    """The training image policy's minimum size, which enrolled photos follow too."""
    return RunConfig.from_dict(loaded.config).data.min_size


def _catch_up(ws: Workspace) -> None:
    """Replay into an opened gallery the journal entries it lacks (an enrolment killed between
    its journal entry and its gallery save), then save it; a gallery that is no prefix of the
    journal is named, with the fix."""
    gallery = ws.gallery
    seed = seed_entries(ws.workdir, gallery)  # a read: most opens take no lock here
    if seed:
        with may_write(ws.workdir) as free:
            if free:  # the journal was empty: the gallery holds exactly these entries
                gallery.journal = seed_journal(ws.workdir, seed)
                gallery.save(ws.gallery_root)
    replayed = catch_up(
        gallery,
        ws.workdir,
        lambda records, desc: ws.embed(records, desc=desc, progress=False),
        min_size=_min_size(ws.loaded),
    )
    if replayed is None:
        print(
            f"warning: the gallery in {ws.gallery_root} does not hold what the enrolment "
            f"journal {journal_path(ws.workdir)} says; run --rebuild_gallery to rebuild it "
            "from the journal",
            file=sys.stderr,
        )
    elif replayed.entries:
        print(replayed.describe(journal_path(ws.workdir)), file=sys.stderr)
        print(refresh_policy(ws, why="enrolments replayed"), file=sys.stderr)
        gallery.save_if_free(ws.gallery_root, ws.workdir)


def _stale_for_its_run(
    root: Path, loaded: LoadedModel, tta: str, checkpoint: Path, run: Path
) -> bool:
    """Whether the run's own best model is newer than the gallery its run built: training
    stopped (Ctrl-C, kill) between saving a better model and indexing with it. The gallery is
    then rebuilt for it (the journal replays every enrolment), not refused; a gallery meant for
    another ``--checkpoint`` is still refused."""
    own = checkpoints_dir(run) / ckpt.BEST
    if Path(checkpoint).resolve() != own.resolve():
        return False
    if stored_fingerprint(root) == gallery_fingerprint(loaded, tta):
        return False
    print(
        f"note: {own} is newer than the gallery in {root} (training stopped before it indexed "
        "with it); rebuilding the gallery for it, enrolments included",
        file=sys.stderr,
    )
    return True


def refresh_policy(ws: Workspace, *, why: str, target_accuracy: float | None = None) -> str:
    """Choose the policy again on val after the gallery changed (enrol, remove, old format);
    returns a line saying what happened. A data folder that moved keeps the old policy."""
    try:
        prepared = prepare_for(ws.loaded, ws.workdir, data=None, image_root=None)
    except (InputError, FileNotFoundError) as exc:
        return f"note: decision policy kept as it was (val split not readable: {exc})"
    target = target_accuracy or ws.gallery.policy_for(expand=False).target_accuracy
    note = choose_policy_on_val(
        ws.gallery,
        prepared.val,
        lambda records, desc: ws.embed(records, desc=desc, progress=False),
        why=why,
        target_accuracy=target,
    )
    rule = ws.gallery.policy_for(expand=False).rule.describe()
    fusion = ws.gallery.fusion
    if fusion is not None and not fusion_still_fits(fusion, ws.gallery):
        ws.gallery.fusion = None  # chosen again on val at the next search
        note += "; local matching is calibrated again on val at the next search"
        checked = fusion.policy is not None and fusion.policy.unknown_min_confidence > 0
        if checked and CHECK_DROPPED not in note:  # the fused search's check goes with it
            note += CHECK_DROPPED
    return f"decision policy: {rule}, chosen again on val ({why}){note}"


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
    target_accuracy: float | None = None,
    run: Path | None = None,
) -> Workspace:
    """Load the model and its gallery, building (and saving) the gallery when needed.
    ``target_accuracy``: when it differs from the stored policy's, the policy's threshold is
    chosen again on val for it (and saved). ``run``: the run folder whose gallery to use
    (default: the workdir's current run)."""
    plan = inference_plan(device)
    loaded = load_inference_model(checkpoint, plan)
    run = run or current_run(workdir)
    root = gallery_root(run, tta)
    if gallery_exists(root) and not rebuild:
        rebuild = _stale_for_its_run(root, loaded, tta, checkpoint, run)
    if gallery_exists(root) and not rebuild:
        gallery = Gallery.load(root, expected_fingerprint=gallery_fingerprint(loaded, tta))
        ws = Workspace(workdir, plan, loaded, gallery, tta, batch_size, run)
        _catch_up(ws)
        stored = gallery.policy_for(expand=False).target_accuracy
        why = None
        if gallery.policy is None and gallery.size:
            why = "gallery saved before the calibrated decision"
        elif target_accuracy is not None and gallery.policy and target_accuracy != stored:
            why = f"--target_accuracy {target_accuracy:g}"
        if why:
            print(refresh_policy(ws, why=why, target_accuracy=target_accuracy))
            gallery.save_if_free(root, workdir)
        return ws
    if gallery_exists(root) and not journal_path(workdir).exists():
        # enrolments made before the journal
        seed_journal(workdir, seed_entries(workdir, Gallery.load(root)))
    prepared = prepare_for(loaded, workdir, data=data, image_root=image_root)
    gallery = build_gallery(
        loaded,
        prepared,
        workdir,
        plan=plan,
        tta=tta,
        batch_size=batch_size,
        progress=progress,
        target_accuracy=target_accuracy or TARGET_ACCURACY,
    )
    if not gallery.save_if_free(root, workdir):
        print(
            f"note: another process is changing {workdir}; this gallery is used now and built "
            "again next time",
            file=sys.stderr,
        )
    return Workspace(workdir, plan, loaded, gallery, tta, batch_size, run)
