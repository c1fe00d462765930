"""Security: no code from data, no secret anywhere it could be read back, a web UI that stays local.

- The package never unpickles, evals or execs (an AST scan of its source,
  so a new call cannot slip in), and a real run leaves no pickle on disk.
- A run over an S3 inbox with a secret key unique to this module: the value
  is in none of the run's events, run configs, tags, asset metadata, captured
  logs, instance databases or catalog files, nor in anything the CLI printed.
- The web UI binds to 127.0.0.1 unless told otherwise, and `--read-only`
  (documented in the README) refuses to launch runs.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from tile_assets import cli
from tile_assets.definitions import build_definitions
from tile_assets.settings import Settings
from tile_assets_tests.fixtures.s3 import SeaweedServer
from tile_assets_tests.reliability.corpus import SAMPLES

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "tile_assets"
DOCS = REPO_ROOT / "README.md"
UNSAFE_MODULES = frozenset({"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"})
UNSAFE_BUILTINS = frozenset({"eval", "exec", "compile", "__import__"})
UNSAFE_ATTRIBUTES = frozenset({"read_pickle", "to_pickle", "unsafe_load", "full_load", "system", "popen"})
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
SERVER_START_TIMEOUT_S = 180.0


def unsafe_calls(path: Path) -> list[str]:
    """Each import of a pickle-like module and each eval/exec/unsafe load in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func, keywords = node.func, {k.arg: k.value for k in node.keywords}
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                found.append(f"{where} {func.id}()")
            elif isinstance(func, ast.Attribute) and func.attr in UNSAFE_ATTRIBUTES:
                found.append(f"{where} .{func.attr}()")
            elif isinstance(func, ast.Attribute) and func.attr == "load" and _is_name(func.value, "yaml"):
                loader = keywords.get("Loader")
                if not (isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")):
                    found.append(f"{where} yaml.load without SafeLoader")
            elif isinstance(func, ast.Attribute) and func.attr == "load" and _is_name(func.value, "np", "numpy"):
                allow = keywords.get("allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value:
                    found.append(f"{where} numpy.load(allow_pickle=True)")
            if any(k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value for k in node.keywords):
                found.append(f"{where} shell=True")
    return found


def _is_name(node: ast.expr, *names: str) -> bool:
    return isinstance(node, ast.Name) and node.id in names


def test_the_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "import pickle\nfrom marshal import loads\nimport yaml, numpy as np, os, subprocess\n"
        "eval('1')\nexec('x = 1')\nyaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
        "np.load(f, allow_pickle=True)\nos.system('ls')\nsubprocess.run('ls', shell=True)\n"
    )
    assert [hit.split(" ", 1)[1] for hit in unsafe_calls(sample)] == [
        "import pickle", "from marshal import", "eval()", "exec()", "yaml.load without SafeLoader",
        "numpy.load(allow_pickle=True)", ".system()", "shell=True",
    ]


def test_the_package_never_unpickles_evals_or_execs() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 40
    assert [hit for path in sources for hit in unsafe_calls(path)] == []


@dataclass
class SecretRun:
    """A CLI run over an S3 inbox with AWS_SECRET_ACCESS_KEY set to `secret`."""

    secret: str
    root: Path
    printed: str
    code: int


@pytest.fixture(scope="module")
def secret_run(s3_server: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretRun]:
    """SeaweedFS without identities accepts any signature, so a fresh secret works and can be searched for."""
    secret = f"tile-assets-secret-{uuid.uuid4().hex}"
    root = tmp_path_factory.mktemp("secret")
    bucket = s3_server.make_bucket("secret")
    client = s3_server.client()
    for name in ("rgb-byte-tenth.tif", "page_text.png"):
        client.put_object(Bucket=bucket, Key=f"inbox/{name}", Body=(SAMPLES / name).read_bytes())
    client.put_object(Bucket=bucket, Key="inbox/broken.tif", Body=b"not a tiff")  # a failure path, too
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": s3_server.region, "DAGSTER_HOME": str(root / "home"),
            "TILE_ASSETS_INBOX": "unset", "TILE_ASSETS_CATALOG": "unset",
        }.items():
            env.setenv(name, value)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.chdir(root)
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = cli.main(["run", f"s3://{bucket}/inbox", "--catalog", str(root / "catalog")])
        yield SecretRun(secret, root, printed.getvalue(), code)


def test_the_run_used_the_secret(secret_run: SecretRun) -> None:
    assert secret_run.code == 1  # broken.tif is rejected; the two images complete
    assert len(list((secret_run.root / "catalog" / "scenes").glob("*/item.json"))) == 2


def test_the_secret_is_in_no_file_the_run_left(secret_run: SecretRun) -> None:
    """Instance databases (events, runs, job snapshots), captured logs and the whole catalog."""
    files = [p for p in secret_run.root.rglob("*") if p.is_file()]
    assert len(files) > 20
    needle = secret_run.secret.encode()
    assert [str(p) for p in files if needle in p.read_bytes()] == []


def test_the_secret_is_in_no_event_config_tag_or_metadata(secret_run: SecretRun) -> None:
    with dg.DagsterInstance.from_config(str(secret_run.root / "home")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 4  # three scenes and the catalog
        for run in runs:
            assert secret_run.secret not in repr(run.run_config) + repr(run.tags)
            records = instance.all_logs(run.run_id)
            assert records and not [r for r in records if secret_run.secret in dg.serialize_value(r)]


def test_the_secret_is_not_printed_and_not_in_the_definitions(secret_run: SecretRun, s3_server: SeaweedServer) -> None:
    assert secret_run.secret not in secret_run.printed
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_SECRET_ACCESS_KEY", secret_run.secret)
        env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
        defs = build_definitions(Settings.from_environment())
    # What the UI shows of a resource is its configuration: the variable's name, never its value.
    assert secret_run.secret not in repr(defs.resources)
    assert "AWS_SECRET_ACCESS_KEY" in repr(defs.resources)


def test_no_pickle_is_written(secret_run: SecretRun) -> None:
    written = [p for p in (secret_run.root / "catalog").rglob("*") if p.is_file()]
    storage = secret_run.root / "home" / "storage"
    written += [p for p in storage.rglob("*") if p.is_file()] if storage.exists() else []
    assert [str(p) for p in written if p.read_bytes()[:2] in PICKLE_MAGIC] == []
    assert not [p for p in written if p.suffix in (".pkl", ".pickle")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture(scope="module")
def read_only_webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`dagster-webserver -w workspace.yaml --read-only` with no host given; its port."""
    root = tmp_path_factory.mktemp("webserver")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(root), "TILE_ASSETS_INBOX": str(root / "inbox"),
           "TILE_ASSETS_CATALOG": str(root / "catalog")}
    command = [str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(REPO_ROOT / "workspace.yaml"),
               "-p", str(port), "--read-only"]
    with (root / "webserver.log").open("wb") as log:
        server = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert server.poll() is None, (root / "webserver.log").read_text()[-3000:]
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                break
            assert time.monotonic() < deadline, "the webserver did not start"
            time.sleep(1)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_the_web_ui_listens_on_loopback_only_by_default(read_only_webserver: int) -> None:
    addresses = listening_addresses(read_only_webserver)
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    assert addresses and addresses <= loopback, addresses


def test_read_only_mode_refuses_to_launch_runs_and_is_documented(read_only_webserver: int) -> None:
    client = DagsterGraphQLClient("127.0.0.1", port_number=read_only_webserver)
    with pytest.raises(DagsterGraphQLClientError) as refused:
        client.submit_job_execution("refresh_catalog")
    assert "Unauthorized" in str(refused.value)
    docs = DOCS.read_text()
    assert "--read-only" in docs and "127.0.0.1" in docs
