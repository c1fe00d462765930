"""What every benchmark shares: result rows, the work folder, fresh measured subprocesses, RSS.

Each measured side runs in a fresh interpreter (`run_side`), so one side's
imports, caches and heap never flatter or burden the other; the side reports
a JSON dict on its last stdout line. Memory is read from /proc: VmRSS now,
VmHWM (peak) since the last `reset_peak()`.

Only the standard library is imported here: SAHI's own interpreter imports
this module too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / ".work"
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
SAHI_VENV = WORK / "venv-sahi"
SAHI_PYTHON = SAHI_VENV / "bin" / "python"
SAHI_PACKAGES = (
    # sahi without its torch/matplotlib/opencv-python requirements: what slicing and merging
    # import, plus scikit-image and imagecodecs, SAHI's fallback reader for TIFFs PIL cannot open.
    "numpy", "opencv-python-headless", "shapely", "tqdm", "pillow", "pybboxes", "fire",
    "terminaltables", "requests", "click", "pyyaml", "scikit-image", "imagecodecs",
)
MB = 1024 * 1024

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    """One line of the table: what was measured, ours against the baseline, and the target."""

    metric: str
    ours: str
    baseline: str
    ratio: float
    ratio_text: str
    target: str
    met: bool | None  # None: a row given for context, without a target
    note: str = ""


def status(key: str) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process, and VmRSS split into RssAnon (private: heap, arrays)
    and RssFile (mapped files: library code faulted in on first use, shared with every process
    that maps it), from /proc/<pid>/status; {} if it is gone."""
    try:
        text = Path(f"/proc/{key}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) * 1024
    return out


def rss() -> int:
    """This process's resident set size now, in bytes."""
    return status("self")["VmRSS"]


def peak() -> int:
    """This process's peak resident set size since start or the last `reset_peak()`, in bytes."""
    return status("self")["VmHWM"]


def reset_peak() -> None:
    """Start measuring the peak anew from the current RSS (Linux clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def emit(result: dict[str, Any]) -> None:
    """A side's result: one JSON line, the last on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def run_side(
    module: str,
    args: Sequence[str],
    python: Path = PROJECT_PYTHON,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run `python -m <module> <args>` fresh from the repo root; return the JSON it emitted last."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    done = subprocess.run(
        [str(python), "-m", module, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{module} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def best_of(runs: int, measure: Callable[[], dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the smallest `key` out of `runs` (machines are noisy; the minimum is the signal)."""
    results = [measure() for _ in range(runs)]
    return min(results, key=lambda r: r[key])


def ensure_sahi(progress: Progress) -> Path:
    """SAHI's own virtualenv under bench/.work (sahi without torch), created on first use."""
    if SAHI_PYTHON.exists():
        check = subprocess.run(
            [str(SAHI_PYTHON), "-c", "import sahi.slicing, sahi.postprocess.combine"],
            capture_output=True,
            check=False,
        )
        if check.returncode == 0:
            return SAHI_PYTHON
    progress(f"creating SAHI's virtualenv in {SAHI_VENV} (sahi --no-deps plus its light deps)")
    subprocess.run(["python3.11", "-m", "venv", str(SAHI_VENV)], check=True)
    pip = [str(SAHI_PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "sahi", "--no-deps"], check=True)
    subprocess.run([*pip, *SAHI_PACKAGES], check=True)
    return SAHI_PYTHON


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call, and its result."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value
