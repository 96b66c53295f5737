"""What the fault-injection tests share: the fork server's client, the seeded kill points, and
the states a workdir may be found in after a kill (issue 38 item 6)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fault_runner import phases_of

import search
from retrieval.serving.gallery import Gallery

RUNNER = Path(__file__).with_name("fault_runner.py")
SEED = 38


@dataclass(frozen=True)
class KillSet:
    """How many kill points an operation gets: at counted writes, one drawn in each equal
    stretch of its dry run's writes, then at times drawn over the dry run's duration."""

    writes: int
    timed: int

    @property
    def ids(self) -> list[str]:
        return [f"write-{k + 1:02d}" for k in range(self.writes)] + [
            f"timed-{k + 1}" for k in range(self.timed)
        ]


KILLS = KillSet(writes=20, timed=4)  # per enrolment and gallery-save job


class FaultServer:
    """``tests/fault_runner.py`` in a subprocess: one job in, one result out."""

    def __init__(self, cwd: Path) -> None:
        """Start the server; its imports run while the caller goes on (training the base)."""
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = False

    def run(self, job: dict) -> dict:
        if not self.ready:
            line = self.proc.stdout.readline()
            assert json.loads(line or "{}").get("ready"), "fault_runner.py did not start"
            self.ready = True
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"fault_runner.py died (exit {self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@dataclass(frozen=True)
class KillPoint:
    at: int | None = None  # the counted write (1-based) the child dies at
    phase: str | None = None  # before / torn / after that write
    after_s: float | None = None  # or: killed from outside after this long

    def job(self) -> dict:
        if self.after_s is not None:
            return {"kill_after_s": self.after_s}
        return {"kill": [self.at, self.phase]}

    def describe(self, trace: list[list[str]]) -> str:
        if self.after_s is not None:
            return f"SIGKILL at {self.after_s:.2f} s"
        kind, target = trace[self.at - 1]
        return f"SIGKILL {self.phase} write {self.at}/{len(trace)}: {kind}({target})"


@dataclass(frozen=True)
class Plan:
    """A dry run's trace and duration, and the kill points drawn over them."""

    trace: list[list[str]]
    seconds: float
    points: list[KillPoint]


def draw_kill_points(
    trace: list[list[str]], seconds: float, op: str, kills: KillSet
) -> list[KillPoint]:
    """``kills.writes`` points, one drawn in each equal stretch of the (write, phase) sequence
    so the whole run is covered, then ``kills.timed`` times; seeded by ``SEED`` and ``op``."""
    rng = random.Random(f"{SEED}-{op}")
    candidates = [(n, p) for n, (kind, _) in enumerate(trace, 1) for p in phases_of(kind)]
    stretches = np.array_split(np.arange(len(candidates)), kills.writes)
    points = [KillPoint(*candidates[rng.choice(list(s))]) for s in stretches]
    return points + [KillPoint(after_s=rng.uniform(0.05, seconds)) for _ in range(kills.timed)]


def dry_run(server: FaultServer, job: dict, folder: Path, op: str, kills: KillSet) -> Plan:
    """Run ``job`` once without a kill, recording every counted write."""
    trace = folder / "trace.json"
    result = server.run({**job, **files(folder), "trace": str(trace)})
    log = (folder / "child.log").read_text(errors="replace")[-3000:]
    assert result["rc"] == 0, f"the dry run of {op} failed:\n{log}"
    writes = json.loads(trace.read_text())
    points = draw_kill_points(writes, result["seconds"], op, kills)
    return Plan(writes, result["seconds"], points)


def files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"log": str(folder / "child.log"), "confirm": str(folder / "confirmed.txt")}


def confirmations(folder: Path) -> list[str]:
    path = folder / "confirmed.txt"
    return path.read_text().splitlines() if path.is_file() else []


def killed_job(server: FaultServer, job: dict, point: KillPoint, folder: Path, plan: Plan) -> dict:
    """Run ``job`` to ``point``; a write kill must land (the runs are deterministic)."""
    result = server.run({**job, **point.job(), **files(folder)})
    assert not result["timed_out"], f"{point.describe(plan.trace)}: the run hung"
    if point.after_s is None:
        log = (folder / "child.log").read_text(errors="replace")[-2000:]
        assert result["killed"], f"{point.describe(plan.trace)} not reached:\n{log}"
    return result


def live_items(gallery: Gallery) -> dict[str, str]:
    """{image path: class name} of the items a search can return; the index and the tables
    must agree on which they are (a half-applied change would not)."""
    ids = np.flatnonzero(gallery.labels_by_id >= 0)
    assert sorted(gallery.index.ids().tolist()) == ids.tolist(), "index and tables disagree"
    return {gallery.paths_by_id[i]: gallery.class_names[gallery.labels_by_id[i]] for i in ids}


def signature(gallery: Gallery) -> dict:
    """Everything a gallery save must write all at once or not at all."""
    ids = gallery.index.ids()
    order = np.argsort(ids)
    return {
        "items": live_items(gallery),
        "ids": ids[order].tolist(),
        "vectors": gallery.index.reconstruct_all()[order].tobytes(),
        "labels_by_id": gallery.labels_by_id.tolist(),
        "paths_by_id": list(gallery.paths_by_id),
        "class_names": list(gallery.class_names),
        "expansion": json.dumps(None if gallery.expansion is None else gallery.expansion.to_dict()),
        "fingerprint": gallery.fingerprint,
    }


def which_state(found, states: list, confirmed: int, point: str) -> int:
    """The index of ``found`` in ``states`` (state i: after the first i changes), which must be
    the ``confirmed`` one or the one the killed change would have made; never anything else."""
    assert found in states, f"{point}: a state that is none of the expected ones (half applied)"
    index = states.index(found)
    assert index >= confirmed, f"{point}: lost a confirmed change ({confirmed} confirmed, {index})"
    assert index <= confirmed + 1, f"{point}: {index} changes applied, only {confirmed} ran"
    return index


def search_works(capsys, photo: Path, workdir: Path, where: str):
    """Search one photo in ``workdir`` as a user would (local matching off: its keypoint
    calibration costs seconds and is not what is tested): its JSON answer."""
    capsys.readouterr()
    flags = ["--format", "json", "--device", "cpu", "--local_match", "off"]  # no keypoints
    rc = search.main([str(photo), "--workdir", str(workdir), *flags])
    out, err = capsys.readouterr()
    assert rc in (0, 1), f"{where}: search.py fails on the workdir (exit {rc}): {err[-1500:]}"
    return json.loads(out)


def versions_listed(capsys, workdir: Path, where: str) -> None:
    """``search.py --gallery_versions`` lists the versions a user could go back to."""
    capsys.readouterr()
    rc = search.main(["--gallery_versions", "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert rc == 0, f"{where}: search.py --gallery_versions fails: {err[-1500:]}"


def wait_until_unlocked(workdir: Path, timeout_s: float = 60.0) -> None:
    """Wait until no process holds ``workdir``'s writer lock (orphaned workers exit)."""
    import fcntl
    import time

    deadline = time.monotonic() + timeout_s
    with open(Path(workdir) / ".lock", "rb") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # closing the handle releases it
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{workdir} stays locked"
                time.sleep(0.05)
