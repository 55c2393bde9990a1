"""Dataset benchmarks: COCO import, 1M-record commit, diff, storage of 10 versions,
and the same record set versioned with DVC (the peer a user would pick).

    python benchmarks/datasets.py [--records 1000000] [--json] [--no-peer]

Prints a table and, with --json, one JSON line. Needs the shared fixtures
(LOOPHUB_SHARED, default ../shared) for the real COCO file it replicates, and DVC, the
peer (the `bench` extra: `python -m pip install -e '.[bench]'`, which `make bench` runs):
without it the benchmark says how to install it and exits with 2 before measuring
anything, unless --no-peer asks for loophub's figures alone (then it says that DVC's
columns are absent, and the JSON line lists "dvc" under "peers_absent").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from loophub.datasets import versions
from loophub.datasets.manifest import ManifestWriter, format_line
from loophub.datasets.models import Dataset, DatasetVersion
from loophub.datasets.service import Actor, DatasetService
from loophub.store.blobs import BlobStore
from loophub.store.db import Database

REPO = Path(__file__).resolve().parent.parent
COCO_FIXTURE = "fixtures/coco/mmdet_coco_dummy_instances_val2017.json"
LABELS = ["person", "car", "bicycle", "dog", "cat", "bus", "truck", "bird"]
ACTOR = Actor("bench")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def replicated_coco(source: Path, annotations: int, target: Path) -> int:
    """The real COCO file with its images repeated until it has ``annotations`` annotations."""
    doc = json.loads(source.read_text())
    per_copy = len(doc["annotations"])
    copies = -(-annotations // per_copy)
    images, anns = [], []
    for copy in range(copies):
        for image in doc["images"]:
            images.append({**image, "id": image["id"] * 10_000 + copy,
                           "file_name": f"{copy:06d}_{image['file_name']}"})
        for ann in doc["annotations"]:
            anns.append({**ann, "id": len(anns) + 1, "image_id": ann["image_id"] * 10_000 + copy})
    target.write_text(json.dumps({**doc, "images": images, "annotations": anns}))
    return len(anns)


def record(index: int, generation: int) -> dict:
    rng = random.Random(index * 7919 + generation)
    anns = [{"type": "bbox", "label": rng.choice(LABELS),
             "bbox": [rng.randint(0, 600), rng.randint(0, 400), rng.randint(8, 200),
                      rng.randint(8, 200)], "iscrowd": False}
            for _ in range(1 + index % 3)]
    return {"id": f"img{index:08d}", "media": {"path": f"images/img{index:08d}.jpg",
                                                "width": 640, "height": 480},
            "split": "train" if index % 10 else "val", "annotations": anns}


def write_records(path: Path, indices, generation_of) -> None:
    with open(path, "w") as out:
        for index in indices:
            out.write(json.dumps(record(index, generation_of(index)),
                                 separators=(",", ":")) + "\n")


def bench_coco(service: DatasetService, shared: Path, work: Path, annotations: int) -> dict:
    path = work / "coco_big.json"
    count = replicated_coco(shared / COCO_FIXTURE, annotations, path)
    service.create_dataset(ACTOR, "coco-big")
    start = time.perf_counter()
    report = service.import_data(ACTOR, "coco-big", "coco", path)
    return {"coco_annotations": count, "coco_images": report.records,
            "coco_import_s": time.perf_counter() - start}


def bench_versions(service: DatasetService, work: Path, n: int, n_versions: int,
                   change: float) -> tuple[dict, list[set[int]]]:
    base = work / "records.jsonl"
    write_records(base, range(n), lambda i: 0)
    service.create_dataset(ACTOR, "big")
    start = time.perf_counter()
    service.import_data(ACTOR, "big", "loophub", base)
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    first = service.commit(ACTOR, "big", "v1")
    commit_s = time.perf_counter() - start
    generation: dict[int, int] = {}
    change_sets, step_import, step_commit, stored = [], [], [], [first["stored_bytes"]]
    for version in range(2, n_versions + 1):
        changed = set(random.Random(version).sample(range(n), int(n * change)))
        change_sets.append(changed)
        generation.update(dict.fromkeys(changed, version))
        delta_file = work / f"changes_{version}.jsonl"
        write_records(delta_file, sorted(changed), lambda i: generation[i])
        start = time.perf_counter()
        service.import_data(ACTOR, "big", "loophub", delta_file)
        step_import.append(time.perf_counter() - start)
        start = time.perf_counter()
        info = service.commit(ACTOR, "big", f"v{version}")
        step_commit.append(time.perf_counter() - start)
        stored.append(info["stored_bytes"])
        delta_file.unlink()
    with service.db.session() as session:
        dataset = session.scalars(select(Dataset).where(Dataset.name == "big")).one()
        rows = session.scalars(select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id).order_by(DatasetVersion.number)).all()
    v1, last = rows[0], rows[-1]
    start = time.perf_counter()
    quick = service.diff(ACTOR, "big", "v1", f"v{n_versions}")
    diff_delta_s = time.perf_counter() - start
    start = time.perf_counter()
    full = versions.Diff(v1.id, last.id)
    versions._merge_diff(full, service.blobs, versions.chain_to_snapshot(service.db, v1),
                         versions.chain_to_snapshot(service.db, last))
    diff_merge_s = time.perf_counter() - start
    assert len(full.changed) == quick["changed"], "the two diff paths disagree"
    # the worst case: the same two versions on snapshots of their own (no shared listing)
    last_alone = full_snapshot(service, last)
    start = time.perf_counter()
    apart = versions.Diff(v1.id, last.id)
    versions._merge_diff(apart, service.blobs, versions.chain_to_snapshot(service.db, v1),
                         [last_alone])
    diff_snapshots_s = time.perf_counter() - start
    assert len(apart.changed) == quick["changed"], "the snapshot diff disagrees"
    return {
        "records": n, "versions": n_versions, "change_fraction": change,
        "import_1m_s": import_s, "commit_1m_s": commit_s,
        "step_import_s": sum(step_import) / len(step_import),
        "step_commit_s": sum(step_commit) / len(step_commit),
        "diff_1m_s": diff_merge_s, "diff_1m_delta_s": diff_delta_s,
        "diff_1m_snapshots_s": diff_snapshots_s,
        "diff_changed": quick["changed"],
        "bytes_1v": stored[0], "bytes_10v": sum(stored),
        "storage_ratio_10v": sum(stored) / stored[0],
        "ours_versioning_s": import_s + commit_s + sum(step_import) + sum(step_commit),
        "ours_commit_only_s": commit_s + sum(step_commit),
    }, change_sets


def full_snapshot(service: DatasetService, version: DatasetVersion) -> DatasetVersion:
    """``version`` written out as a snapshot of its own (not stored as a version)."""
    writer = ManifestWriter(service.blobs, {"kind": "snapshot"})
    for entry in versions.iter_entries(service.db, service.blobs, version):
        writer.write(format_line("+", entry, entry.record_id), entry.record_id)
    return DatasetVersion(id=f"snapshot of {version.id}", snapshot=writer.close()[0])


PEER_INSTALL = f"cd {REPO} && {sys.executable} -m pip install -e '.[bench]'"


def _dvc_command() -> str | None:
    """DVC's command: the one installed with this interpreter, else one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else shutil.which("dvc")


def _dvc() -> tuple[str, dict]:
    return _dvc_command(), {**os.environ, "DVC_NO_ANALYTICS": "1"}


def dvc_missing() -> str | None:
    """What the DVC columns need and this environment lacks (None: nothing). They run
    `dvc` and `git` commands and DVC's Python API in this interpreter."""
    lacking = []
    if _dvc_command() is None:
        lacking.append(f"no `dvc` command beside {sys.executable} or on PATH")
    if importlib.util.find_spec("dvc") is None:
        lacking.append(f"no `dvc` module for {sys.executable}")
    if shutil.which("git") is None:
        lacking.append("no `git` command on PATH (DVC versions files in a Git repository; "
                       "install git)")
    return "; ".join(lacking) or None


def _dvc_versions(repo: Path, target: str, edit, change_sets: list[set[int]]) -> dict:
    """What a DVC user runs per version, timed: ``dvc add`` of ``target``, then ``git
    commit`` of the ``.dvc`` file in the Git repository DVC works in (the edit itself is
    not timed)."""
    dvc, env = _dvc()
    env = {**env, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}

    def run(*command: str) -> None:
        subprocess.run(command, cwd=repo, check=True, env=env, stdout=subprocess.DEVNULL)
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run("git", "commit", "-qm", "dvc init")
    times, commit_s, generation = [], [], {}
    for version, changed in enumerate([set(), *change_sets], 1):
        if changed:
            generation.update(dict.fromkeys(changed, version))
            edit(changed, generation)
        start = time.perf_counter()
        run(dvc, "add", "-q", target)
        middle = time.perf_counter()
        run("git", "add", f"{target}.dvc", ".gitignore")
        run("git", "commit", "-qm", f"v{version}")
        times.append(time.perf_counter() - start)
        commit_s.append(time.perf_counter() - middle)
    cache = sum(p.stat().st_size for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file())
    return {"first_add_s": times[0], "step_add_s": sum(times[1:]) / max(1, len(times) - 1),
            "total_s": sum(times), "git_commit_s": sum(commit_s), "cache_bytes": cache}


def bench_dvc_jsonl(work: Path, n: int, change_sets: list[set[int]]) -> dict:
    """DVC's best case: the record set as one JSONL file, rewritten by each edit."""
    repo = work / "dvc"
    repo.mkdir()
    shutil.copy(work / "records.jsonl", repo / "records.jsonl")

    def edit(changed, generation) -> None:
        write_records(repo / "records.jsonl", range(n), lambda i: generation.get(i, 0))
    figures = _dvc_versions(repo, "records.jsonl", edit, change_sets)
    return {f"dvc_{key}": value for key, value in figures.items()}


@contextlib.contextmanager
def _stdout_to_stderr():
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def bench_dvc_api(work: Path, n: int, change_sets: list[set[int]]) -> dict:
    """The same JSONL versions through DVC's Python API in this process (Repo.add): no
    command-line start-up per version, DVC's fastest path."""
    os.environ["DVC_NO_ANALYTICS"] = "1"
    from dvc.repo import Repo
    repo_dir = work / "dvc_api"
    repo_dir.mkdir()
    shutil.copy(work / "records.jsonl", repo_dir / "records.jsonl")
    with _stdout_to_stderr():  # DVC prints to the real stdout, which carries only the JSON
        repo = Repo.init(str(repo_dir), no_scm=True)
    times, generation = [], {}
    for version, changed in enumerate([set(), *change_sets], 1):
        if changed:
            generation.update(dict.fromkeys(changed, version))
            write_records(repo_dir / "records.jsonl", range(n), lambda i: generation.get(i, 0))
        start = time.perf_counter()
        repo.add(str(repo_dir / "records.jsonl"))
        times.append(time.perf_counter() - start)
    return {"dvc_api_first_add_s": times[0], "dvc_api_step_add_s": sum(times[1:]) / max(
        1, len(times) - 1), "dvc_api_total_s": sum(times)}


def bench_dvc_files(service: DatasetService, work: Path, n: int, n_versions: int,
                    change: float) -> dict:
    """The layout annotation data usually has under DVC: one file per record (as VOC XML
    or YOLO txt per image), against loophub on the same records."""
    repo = work / "dvc_files"
    (repo / "records").mkdir(parents=True)

    def write_files(indices, generation) -> None:
        for index in indices:
            path = repo / "records" / f"img{index:08d}.json"
            path.write_text(json.dumps(record(index, generation.get(index, 0))))
    change_sets = [set(random.Random(v).sample(range(n), int(n * change)))
                   for v in range(2, n_versions + 1)]
    write_files(range(n), {})
    dvc = _dvc_versions(repo, "records", write_files, change_sets)
    ours = _ours_versions(service, work, "files-peer", n, change_sets)
    return {"dvc_files_records": n, "dvc_files_total_s": dvc["total_s"],
            "dvc_files_cache_bytes": dvc["cache_bytes"], "ours_files_commit_s": ours[0],
            "ours_files_total_s": ours[1], "ours_files_bytes": ours[2],
            "dvc_files_time_ratio": dvc["total_s"] / ours[0],
            "dvc_files_time_ratio_incl_import": dvc["total_s"] / ours[1],
            "dvc_files_storage_ratio": dvc["cache_bytes"] / ours[2]}


def _ours_versions(service: DatasetService, work: Path, name: str, n: int,
                   change_sets: list[set[int]]) -> tuple[float, float, int]:
    """(commit seconds, import + commit seconds, stored bytes) for the same versions."""
    source = work / f"{name}.jsonl"
    write_records(source, range(n), lambda i: 0)
    service.create_dataset(ACTOR, name)
    commit_s = total_s = 0.0
    stored, generation = 0, {}
    for version, changed in enumerate([set(), *change_sets], 1):
        if changed:
            generation.update(dict.fromkeys(changed, version))
            write_records(source, sorted(changed), lambda i: generation[i])
        start = time.perf_counter()
        service.import_data(ACTOR, name, "loophub", source)
        middle = time.perf_counter()
        stored += service.commit(ACTOR, name, f"v{version}")["stored_bytes"]
        commit_s += time.perf_counter() - middle
        total_s += time.perf_counter() - start
    return commit_s, total_s, stored


def show(figures: dict, stream=sys.stderr) -> None:
    """Print figures as they are measured (a long run shows its progress)."""
    for key, value in figures.items():
        print(f"{key:32} {value:.3f}" if isinstance(value, float) else f"{key:32} {value}",
              file=stream, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--coco-annotations", type=int, default=100_000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--no-peer", "--no-dvc", dest="no_peer", action="store_true",
                        help="measure loophub alone: no DVC, and no dvc_* columns")
    parser.add_argument("--dvc-files", type=int, default=50_000,
                        help="records for the one-file-per-record DVC comparison (0: skip)")
    parser.add_argument("--db-url", help="database URL (default: SQLite in the work folder)")
    parser.add_argument("--workdir", help="keep the work files here (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    if args.no_peer:
        print("--no-peer: DVC is not run; its columns (dvc_*) are absent from this run's "
              "table and JSON line", file=sys.stderr)
    elif missing := dvc_missing():
        print(f"{Path(__file__).name}: DVC, the peer this benchmark compares loophub with, "
              f"is missing: {missing}.\nInstall it with: {PEER_INSTALL}  (`make bench` "
              "does), or pass --no-peer to measure loophub alone, without DVC's columns.",
              file=sys.stderr)
        return 2
    shared = Path(os.environ.get("LOOPHUB_SHARED", REPO.parent / "shared"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="loophub-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        db = Database(args.db_url or f"sqlite:///{work / 'loophub.sqlite'}")
        service = DatasetService(db, BlobStore(str(work / "blobs")))
        result = bench_coco(service, shared, work, args.coco_annotations)
        show(result)
        figures, change_sets = bench_versions(service, work, args.records, args.versions,
                                              args.change)
        result.update(figures)
        show(figures)
        if args.no_peer:
            result["peers_absent"] = ["dvc"]
        else:
            result.update(bench_dvc_jsonl(work, args.records, change_sets))
            show({k: v for k, v in result.items() if k.startswith("dvc")})
            # versioning = commit for loophub (import is ingest), dvc add + git commit for DVC
            result["dvc_time_ratio"] = result["dvc_total_s"] / result["ours_commit_only_s"]
            result["dvc_time_ratio_incl_import"] = (result["dvc_total_s"]
                                                    / result["ours_versioning_s"])
            result["dvc_storage_ratio"] = result["dvc_cache_bytes"] / result["bytes_10v"]
            # one more version after a 1% edit: the step users repeat
            result["dvc_step_time_ratio"] = result["dvc_step_add_s"] / result["step_commit_s"]
            result["dvc_step_time_ratio_incl_import"] = result["dvc_step_add_s"] / (
                result["step_commit_s"] + result["step_import_s"])
            result.update(bench_dvc_api(work, args.records, change_sets))
            result["dvc_api_time_ratio"] = result["dvc_api_total_s"] / result[
                "ours_commit_only_s"]
            result["dvc_api_step_time_ratio"] = (result["dvc_api_step_add_s"]
                                                 / result["step_commit_s"])
            show({k: v for k, v in result.items() if k.startswith("dvc_api")})
            if args.dvc_files:
                result.update(bench_dvc_files(service, work, args.dvc_files, args.versions,
                                              args.change))
        result["peak_rss_mb"] = peak_rss_mb()
        db.dispose()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if not args.json:
        show(result, sys.stdout)
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
