"""5. Merging 100,000 boxes against SAHI's NMS and greedy NMM, with the same result.

The boxes are what tiled detection over a large scene produces: 50,000
objects (log-normal sizes around 27 px, three labels) scattered over
20,000 x 20,000 px, most seen by two or three overlapping tiles with a few
pixels of jitter, each with its own score. Both sides merge them per label,
IoS >= 0.5 (SAHI's defaults, ours too): SAHI 0.12's numpy backend
(`batched_nms`, `batched_greedy_nmm`: an STRtree-built sparse match list and
a greedy loop over survivors) in its own virtualenv, ours the array kernel
`merge_findings` runs on (`visiting_order` + `greedy_owners`). Kept boxes
(NMS) and groups (greedy NMM) must be identical, and are also compared
class-agnostic with IoU. Matching semantics are the same on both sides:
a pair matches when metric >= threshold (SAHI compares with `>=` too), the
greedy order is by score, and ties in score are broken differently (SAHI by
coordinates, ours by label then coordinates), which is why scores here are
distinct. Object-level rows, for context: `merge_findings` on `Finding`s
against SAHI's `NMSPostprocess` / `GreedyNMMPostprocess` on
`ObjectPrediction`s (SAHI re-checks each merge against the growing box, so
its greedy NMM objects differ slightly from its own kernel's groups).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from bench.harness import WORK, Progress, Row, emit, ensure_sahi, run_side

N_BOXES = 100_000
SCENE_SIDE = 20_000
LABELS = ("building", "car", "tree")
METRIC, THRESHOLD = "ios", 0.5
REPEATS = 3
TARGET = 5.0


def make_boxes(n: int = N_BOXES, seed: int = 7) -> np.ndarray:
    """(n, 6) rows [x0, y0, x1, y1, score, label]: objects seen 1-3 times with jitter."""
    rng = np.random.default_rng(seed)
    objects = n // 2
    cx, cy = rng.uniform(0, SCENE_SIDE, objects), rng.uniform(0, SCENE_SIDE, objects)
    w = np.exp(rng.normal(3.3, 0.5, objects))
    h = w * np.exp(rng.normal(0, 0.3, objects))
    label = rng.integers(0, len(LABELS), objects)
    seen = np.repeat(np.arange(objects), rng.choice([1, 2, 3], size=objects, p=[0.3, 0.4, 0.3]))[:n]
    seen = np.concatenate([seen, rng.integers(0, objects, n - len(seen))])
    jitter = rng.normal(0, 2.0, (n, 4))
    boxes = np.column_stack(
        [
            cx[seen] - w[seen] / 2 + jitter[:, 0],
            cy[seen] - h[seen] / 2 + jitter[:, 1],
            cx[seen] + w[seen] / 2 + jitter[:, 2],
            cy[seen] + h[seen] / 2 + jitter[:, 3],
        ]
    ).round(1)
    scores = rng.uniform(0.05, 1.0, n)
    return np.column_stack([boxes, scores, label[seen].astype(float)])


def _best(fn: Any) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(REPEATS):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def side_sahi(path: str) -> None:
    from sahi.postprocess.combine import (
        GreedyNMMPostprocess,
        NMSPostprocess,
        batched_greedy_nmm,
        batched_nms,
        greedy_nmm,
        nms,
    )
    from sahi.prediction import ObjectPrediction

    preds = np.load(path)
    out: dict[str, Any] = {}
    out["nms_s"], keep = _best(lambda: batched_nms(preds, METRIC.upper(), THRESHOLD))
    out["nmm_s"], groups = _best(lambda: batched_greedy_nmm(preds, METRIC.upper(), THRESHOLD))
    out["nms"] = sorted(int(k) for k in keep)
    out["nmm"] = {str(k): sorted(int(m) for m in v) for k, v in groups.items()}
    out["nms_iou_agnostic"] = sorted(int(k) for k in nms(preds, "IOU", THRESHOLD))
    out["nmm_iou_agnostic"] = {
        str(k): sorted(int(m) for m in v) for k, v in greedy_nmm(preds, "IOU", THRESHOLD).items()
    }
    objects = [
        ObjectPrediction(bbox=[x0, y0, x1, y1], category_id=int(c), category_name=LABELS[int(c)], score=s)
        for x0, y0, x1, y1, s, c in preds.tolist()
    ]
    for name, cls in (("nms_objects", NMSPostprocess), ("nmm_objects", GreedyNMMPostprocess)):
        post = cls(match_threshold=THRESHOLD, match_metric=METRIC.upper(), class_agnostic=False)
        start = time.perf_counter()
        out[f"{name}_n"] = len(post(list(objects)))
        out[f"{name}_s"] = time.perf_counter() - start
    emit(out)


def _groups(owner: np.ndarray) -> dict[str, list[int]]:
    keepers = np.flatnonzero(owner == np.arange(len(owner)))
    members: dict[str, list[int]] = {str(k): [] for k in keepers.tolist()}
    for j in np.flatnonzero(owner != np.arange(len(owner))).tolist():
        members[str(int(owner[j]))].append(j)
    return members


def side_ours(path: str) -> None:
    from tile_assets.core.merge import greedy_owners, merge_findings, visiting_order
    from tile_assets.core.types import Finding

    preds = np.load(path)
    boxes, scores, codes = preds[:, :4], preds[:, 4], preds[:, 5].astype(np.int64)

    def kernel(per_label: bool, metric: str) -> np.ndarray:
        order = visiting_order(scores, boxes, codes)
        owner = greedy_owners(np.take(boxes, order, axis=0), codes[order] if per_label else None, metric, THRESHOLD)  # type: ignore[arg-type]
        by_input = np.empty(len(order), dtype=np.int64)
        by_input[order] = order[owner]
        return by_input

    out: dict[str, Any] = {}
    out["nms_s"], owner = _best(lambda: kernel(True, METRIC))
    out["nmm_s"] = out["nms_s"]  # one grouping serves both: keepers are NMS, owners greedy NMM
    out["nms"] = np.flatnonzero(owner == np.arange(len(owner))).tolist()
    out["nmm"] = _groups(owner)
    agnostic = kernel(False, "iou")
    out["nms_iou_agnostic"] = np.flatnonzero(agnostic == np.arange(len(agnostic))).tolist()
    out["nmm_iou_agnostic"] = _groups(agnostic)
    findings = [
        Finding(LABELS[int(c)], s, (x0, y0, x1, y1), f"t{i % 49}", (x1 - x0) * (y1 - y0))
        for i, (x0, y0, x1, y1, s, c) in enumerate(preds.tolist())
    ]
    for name, strategy in (("nms_objects", "nms"), ("nmm_objects", "greedy_nmm")):
        seconds, merged = _best(lambda: merge_findings(findings, strategy, METRIC, THRESHOLD))  # type: ignore[arg-type]  # noqa: B023
        out[f"{name}_s"], out[f"{name}_n"] = seconds, len(merged)
    emit(out)


def run(progress: Progress) -> list[Row]:
    sahi_python = ensure_sahi(progress)
    path = WORK / "merge" / "boxes.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    boxes = make_boxes()
    assert len(np.unique(boxes[:, 4])) == len(boxes), "scores must be distinct (tie order differs)"
    np.save(path, boxes)
    progress(f"merge: {N_BOXES:,} boxes, SAHI's numpy backend")
    sahi = run_side("bench.bench_merge", ["sahi", str(path)], python=sahi_python)
    progress(f"merge: {N_BOXES:,} boxes, ours")
    ours = run_side("bench.bench_merge", ["ours", str(path)])
    (WORK / "merge" / "results.json").write_text(json.dumps({"ours": ours, "sahi": sahi}))
    same = {key: ours[key] == sahi[key] for key in ("nms", "nmm", "nms_iou_agnostic", "nmm_iou_agnostic")}
    identical = ", ".join(f"{k}: {'same' if v else 'DIFFERENT'}" for k, v in same.items())
    rows = []
    for key, name in (("nms", "NMS"), ("nmm", "greedy NMM")):
        ratio = sahi[f"{key}_s"] / ours[f"{key}_s"]
        rows.append(
            Row(
                metric=f"5. merge {N_BOXES // 1000}k boxes, {name}, per label, IoS 0.5 (kernel)",
                ours=f"{ours[f'{key}_s'] * 1000:.0f} ms",
                baseline=f"{sahi[f'{key}_s'] * 1000:.0f} ms",
                ratio=ratio,
                ratio_text=f"{ratio:.1f}x faster",
                target=f">= {TARGET:.0f}x, same result",
                met=ratio >= TARGET and same[key],
                note=f"{len(ours[key]):,} kept; {identical}",
            )
        )
    for key, name in (("nms_objects", "NMS"), ("nmm_objects", "greedy NMM")):
        ratio = sahi[f"{key}_s"] / ours[f"{key}_s"]
        rows.append(
            Row(
                metric=f"5. merge {N_BOXES // 1000}k boxes, {name}, objects in and out",
                ours=f"{ours[f'{key}_s'] * 1000:.0f} ms ({ours[f'{key}_n']:,})",
                baseline=f"{sahi[f'{key}_s'] * 1000:.0f} ms ({sahi[f'{key}_n']:,})",
                ratio=ratio,
                ratio_text=f"{ratio:.1f}x faster",
                target="(context)",
                met=None,
                note="merge_findings on Findings vs SAHI's postprocess class on ObjectPredictions",
            )
        )
    return rows


if __name__ == "__main__":
    {"ours": side_ours, "sahi": side_sahi}[sys.argv[1]](*sys.argv[2:])
