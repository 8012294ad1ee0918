"""The `orchestrator` command as a user runs it: a real process, demo backends,
different working directories, bad settings, and `serve` end to end."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from PIL import Image

from orchestrator.config import Settings, env_name
from orchestrator.storage import read_embedded

CLI = [sys.executable, "-m", "orchestrator"]


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()}
    for name in Settings.model_fields:
        env.pop(env_name(name), None)
        env.pop(name.upper(), None)
    env.pop("ORCHESTRATOR_CONFIG", None)
    # Served APIs here are called without a token (test_auth covers auth on).
    env["AUTH_DISABLED"] = "true"
    env.update(extra)
    return env


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A user with no settings at all: config and data in their platform folders."""
    return clean_environ(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"),
        XDG_DATA_HOME=str(tmp_path / "home" / ".local" / "share"),
    )


def test_generate_wait_in_demo_mode_prints_a_real_image(
    tmp_path: Path, home: dict[str, str]
) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    r = run(["generate", "flux", "test", "--wait"], cwd, home)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.is_file()
    assert path.is_relative_to(tmp_path / "home" / ".local" / "share" / "orchestrator")
    with Image.open(path) as im:
        assert im.size == (1024, 768)
    meta = read_embedded(path)
    assert meta is not None and meta["simulated"] is True and meta["params"]["prompt"] == "test"
    assert "DEMO MODE" in r.stderr
    assert not list(cwd.iterdir())  # nothing written where the command ran


def test_two_working_directories_share_one_database(tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "orchestrator.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "data"\nworker_enabled = false\n')
    env = clean_environ(ORCHESTRATOR_CONFIG=str(config))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    shown = [json.loads(run(["config", "show", "--json"], d, env).stdout) for d in (one, two)]
    assert shown[0] == shown[1]
    assert shown[0]["settings"]["DATA_DIR"] == str(config.parent / "data")
    made = run(["generate", "flux", "from one"], one, env)
    assert made.returncode == 0, made.stderr
    job_id = made.stdout.strip()
    listed = run(["jobs", "list", "--json"], two, env)
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)["items"]] == [job_id]
    assert (config.parent / "data" / "orchestrator.db").is_file()
    assert not list(one.iterdir()) and not list(two.iterdir())
    show = run(["jobs", "show", job_id], two, env)
    assert json.loads(show.stdout)["status"] == "queued"
    cancel = run(["jobs", "cancel", job_id], one, env)
    assert cancel.returncode == 0 and "canceled" in cancel.stdout
    again = run(["jobs", "cancel", job_id], one, env)
    assert again.returncode == 1 and "cannot" in again.stderr
    missing = run(["jobs", "show", "nope"], one, env)
    assert missing.returncode == 1 and "not found" in missing.stderr.lower()


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("FLUX_BASE_URL", "not a url", "FLUX_BASE_URL"),
        ("ORCHESTRATOR_PORT", "70000", "ORCHESTRATOR_PORT"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable(
    tmp_path: Path, home: dict[str, str], var: str, value: str, needle: str
) -> None:
    r = run(["config", "check"], tmp_path, {**home, var: value})
    assert r.returncode == 2
    assert needle in r.stderr
    serve = run(["serve"], tmp_path, {**home, var: value})
    assert serve.returncode == 2 and needle in serve.stderr


def test_unwritable_data_dir(tmp_path: Path, home: dict[str, str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run(["config", "check"], tmp_path, {**home, "DATA_DIR": str(blocker / "data")})
    assert r.returncode == 2 and "DATA_DIR" in r.stderr and "not writable" in r.stderr


SHOWN_SECRETS = {
    "BFL_API_KEY": "bflQzX7kWm3vRj9LpYt2Hn",
    "WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"Kq8#Zx!mW2@rV5$tY9&uP3*nB6^cJ1%e").decode(),
    "V0_API_KEY": "v0Gh4JkLq8ZwXc5VbNm",
    "TILDA_PUBLIC_KEY": "tpQw7Er9Ty2Ui",
    "TILDA_SECRET_KEY": "tsZx3Cv6Bn8MaSdFgHj",
}


def test_config_show_says_only_set_and_length(tmp_path: Path, home: dict[str, str]) -> None:
    """No character of a secret is printed: not its end, not any 4 characters of it."""
    env = {**home, "COLUMNS": "200", **SHOWN_SECRETS}
    table = run(["config", "show"], tmp_path, env)
    as_json = run(["config", "show", "--json"], tmp_path, env)
    assert table.returncode == 0, table.stderr
    assert as_json.returncode == 0, as_json.stderr
    for output in (table.stdout, as_json.stdout):
        for name, secret in SHOWN_SECRETS.items():
            leaked = {secret[i : i + 4] for i in range(len(secret) - 3)} & {
                output[i : i + 4] for i in range(len(output) - 3)
            }
            assert not leaked, f"{name}: {sorted(leaked)} printed"
    rows = json.loads(as_json.stdout)["settings"]
    for name, secret in SHOWN_SECRETS.items():
        assert rows[name] == f"**** (set, {len(secret)} characters)"
        line = next(line for line in table.stdout.splitlines() if f" {name} " in line)
        assert f"**** (set, {len(secret)} characters)" in line
    unset = json.loads(run(["config", "show", "--json"], tmp_path, home).stdout)["settings"]
    assert all(unset[name] == "(not set)" for name in SHOWN_SECRETS)
    ok = run(["config", "check"], tmp_path, home)
    assert ok.returncode == 0 and "demo mode" in ok.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_runs_a_job_and_stops_on_sigterm(tmp_path: Path, home: dict[str, str]) -> None:
    port = _free_port()
    env = {**home, "ORCHESTRATOR_PORT": str(port), "LOG_FORMAT": "json"}
    # The log goes to a file, not a pipe: a pipe nobody reads while the test waits
    # fills up (64 KB) and blocks the server's next log line, so a slow start-up that
    # logged more than usual used to hang the server mid-request.
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [*CLI, "serve"], cwd=tmp_path, env=env, stdout=log_file, stderr=log_file, text=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx2.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"serve exited: {log_path.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "serve did not answer /api/system/health"
                try:
                    if client.get("/api/system/health").status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                time.sleep(0.05)  # also after a non-200 answer: no busy loop
            health = client.get("/api/system/health").json()
            assert health["demo"] is True
            r = client.post(
                "/api/flux/generate",
                params={"wait": "true", "timeout_s": 60},
                json={"model": "flux-pro-1.1", "prompt": "served"},
            )
            assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    err = log_path.read_text()
    assert proc.returncode == 0, err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    assert lines, err
    assert all({"event", "level", "timestamp"} <= set(ln) for ln in lines)
    assert any("DEMO MODE" in ln["event"] for ln in lines)
    assert any(ln["event"] == "worker stopped" for ln in lines)


def test_generate_comfy_kinds_in_demo_mode(tmp_path: Path, home: dict[str, str]) -> None:
    sdxl = run(
        [
            "generate",
            "sdxl",
            "a red cube",
            "--width",
            "256",
            "--height",
            "256",
            "--steps",
            "2",
            "--wait",
        ],
        tmp_path,
        home,
    )
    assert sdxl.returncode == 0, sdxl.stderr
    with Image.open(Path(sdxl.stdout.strip().splitlines()[-1])) as im:
        assert im.format == "PNG" and im.size == (256, 256)
    first = tmp_path / "first.png"
    Image.new("RGB", (64, 64), (0, 120, 200)).save(first)
    svd = run(
        [
            "generate",
            "svd",
            "--init-image",
            str(first),
            "--frames",
            "3",
            "-p",
            "width=128",
            "-p",
            "height=64",
            "-p",
            "steps=2",
            "--wait",
        ],
        tmp_path,
        home,
    )
    assert svd.returncode == 0, svd.stderr
    with Image.open(Path(svd.stdout.strip().splitlines()[-1])) as im:
        assert im.format == "WEBP" and getattr(im, "n_frames", 1) == 3
    workflow = tmp_path / "wf.json"
    workflow.write_text(
        json.dumps(
            {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 7},
                },
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": "w"},
                },
            }
        )
    )
    raw = run(["generate", "comfy", "--workflow", str(workflow), "--wait"], tmp_path, home)
    assert raw.returncode == 0, raw.stderr
    assert Path(raw.stdout.strip().splitlines()[-1]).is_file()
    bad = run(["generate", "sdxl", "x", "--width", "100"], tmp_path, home)
    assert bad.returncode == 2 and "width" in bad.stderr
