"""A real `dagster dev` over a small catalog made by the CLI, and headless Chromium to look at it.

Expensive and shared per module: the CLI materializes two sample scenes into a
fresh Dagster home, `dagster dev` (webserver + daemon) serves that home, and
one browser profile is reused by every test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import (
    BrowserContext,
    FloatRect,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from tile_assets.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_INBOX = REPO_ROOT / "data" / "inbox"
SAMPLES = ("rgb-byte-tenth.tif", "naip_2018.tif")
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 10.0
UI_TIMEOUT_MS = 60_000
"""Generous: the UI shares two cores with the daemon and the runs it launches."""

DISMISS_COMMUNITY_DIALOG = "window.localStorage.setItem('communityNux', '\"1\"')"
"""What clicking "Skip" on the UI's first-visit "Join the Dagster community" dialog stores."""


@dataclass(frozen=True)
class UiCatalog:
    """A Dagster home and catalog with every sample scene materialized by the CLI."""

    home: Path
    inbox: Path
    catalog: Path
    keys: dict[str, str]
    """Sample file name → its scene partition key."""

    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_HOME": str(self.home),
            "TILE_ASSETS_INBOX": str(self.inbox),
            "TILE_ASSETS_CATALOG": str(self.catalog),
        }

    def scene_dir(self, sample: str) -> Path:
        return self.catalog / "scenes" / self.keys[sample]


@dataclass(frozen=True)
class DagsterUi:
    """A running `dagster dev`: its base URL and port."""

    url: str
    port: int
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group (webserver, daemon, code servers, runs), then SIGKILL to what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def ui_catalog(tmp_path_factory: pytest.TempPathFactory) -> UiCatalog:
    """Two sample scenes materialized with `tile-assets run` into a fresh home and catalog."""
    root = tmp_path_factory.mktemp("ui")
    inbox = root / "inbox"
    inbox.mkdir()
    for name in SAMPLES:
        shutil.copy(SAMPLE_INBOX / name, inbox / name)
    home = root / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    catalog = root / "catalog"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("TILE_ASSETS_INBOX", str(inbox))
        mp.setenv("TILE_ASSETS_CATALOG", str(catalog))
        exit_code = cli_main(["run", str(inbox), "--catalog", str(catalog)])
    assert exit_code == 0, "the CLI run over the sample scenes failed"
    scene_dirs = [p.name for p in (catalog / "scenes").iterdir()]
    keys = {name: next(k for k in scene_dirs if k.startswith(Path(name).stem + "-")) for name in SAMPLES}
    return UiCatalog(home=home, inbox=inbox, catalog=catalog, keys=keys)


@pytest.fixture(scope="module")
def dagster_ui(ui_catalog: UiCatalog) -> Iterator[DagsterUi]:
    """`dagster dev -w workspace.yaml` on a free port over the CLI's home, stopped with its process group.

    The sensor's first tick relaunches every scene the CLI ran (CLI runs carry no
    sensor run keys), so process_scene runs are in flight during the tests; no
    test waits for them, and assertions compare the UI with files read at that moment.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "dagster-dev.log"
    env = {**os.environ, **ui_catalog.env()}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        str(Path(sys.executable).parent / "dagster"), "dev",
        "-w", str(REPO_ROOT / "workspace.yaml"),
        "-h", "127.0.0.1", "-p", str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not server_answers(url):
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not answer within {SERVER_START_TIMEOUT_S:.0f} s; see {log}")
            time.sleep(1.0)
        yield DagsterUi(url=url, port=port, log=log)
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Debian's Chromium through Playwright, with a fresh profile; skipped when it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT
        )
        context.add_init_script(DISMISS_COMMUNITY_DIALOG)
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so `page` knows whether its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(request: pytest.FixtureRequest, browser_context: BrowserContext, dagster_ui: DagsterUi) -> Iterator[Page]:
    """A new tab on the running UI; a screenshot of it goes to test-artifacts/ui/ when its test fails."""
    tab = browser_context.new_page()
    try:
        yield tab
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            screenshot(tab, f"failed-{request.node.name}")
    finally:
        tab.close()


def screenshot(
    page: Page, name: str, *, full_page: bool = False, clip: FloatRect | None = None, style: str | None = None
) -> Path:
    """Save a screenshot under test-artifacts/ui/ (gitignored) and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, clip=clip, style=style)
    return path
