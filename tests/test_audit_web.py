"""The worker's HTTP API beyond loopback (issue 16): a bearer token, compared in constant time; the routed
header only with it; compose publishes on 127.0.0.1 and passes the token. Pure rules, the CLI, and a real
worker bound to every interface."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.worker import running_worker

from streams.config import ConfigError, Settings
from streams.worker.web import ROUTED_HEADER, bearer_ok, forwarding_headers, routed_here

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"


def status_of(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_bearer_token_is_checked_exactly_and_without_one_configured_nothing_is_required():
    assert bearer_ok(f"Bearer {TOKEN}", TOKEN) and bearer_ok(f"bearer {TOKEN}", TOKEN)
    for header in (None, "", TOKEN, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer "):
        assert not bearer_ok(header, TOKEN), header
    assert bearer_ok(None, "")


def test_the_routed_header_counts_only_with_the_token_and_forwarding_sends_both():
    assert not routed_here({ROUTED_HEADER: "1"}, TOKEN)  # any client could send it
    assert routed_here({ROUTED_HEADER: "1", "Authorization": f"Bearer {TOKEN}"}, TOKEN)
    assert routed_here(forwarding_headers(TOKEN), TOKEN)
    assert not routed_here({"Authorization": f"Bearer {TOKEN}"}, TOKEN)
    assert routed_here({ROUTED_HEADER: "1"}, "")  # loopback only, no token: every client is local


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_bind_needs_no_token(host):
    Settings.from_env({"MINDSTREAM_WEB_HOST": host}).check_web_access()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "worker", ""])
def test_a_wider_bind_needs_a_token(host):
    with pytest.raises(ConfigError, match="set MINDSTREAM_WEB_TOKEN"):
        Settings.from_env({"MINDSTREAM_WEB_HOST": host}).check_web_access()
    Settings.from_env({"MINDSTREAM_WEB_HOST": host, "MINDSTREAM_WEB_TOKEN": TOKEN}).check_web_access()
    assert TOKEN not in repr(Settings.from_env({"MINDSTREAM_WEB_TOKEN": TOKEN}))


def test_the_worker_refuses_to_start_on_a_wide_bind_without_a_token_in_one_line(artifact_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINDSTREAM_")}
    env["MINDSTREAM_WEB_HOST"] = "0.0.0.0"
    result = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--artifact", str(artifact_dir)],
                            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("mind-stream worker: MINDSTREAM_WEB_HOST='0.0.0.0' is reachable from other")


def test_compose_publishes_every_port_on_loopback_and_passes_the_workers_token():
    text = (REPO_ROOT / "deploy" / "docker-compose.yml").read_text()
    published = re.findall(r'^\s+- "([^"]+:\d+:\d+)"\s*$', text, re.MULTILINE)
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    worker = text[text.index("\n  worker:"):]
    assert re.search(r"^\s+MINDSTREAM_WEB_TOKEN: \$\{MINDSTREAM_WEB_TOKEN:\?", worker, re.MULTILINE)


@pytest.fixture(scope="module")
def wide_worker(kafka_bootstrap, artifact_dir, tmp_path_factory):
    with running_worker(kafka_bootstrap, artifact_dir, tmp_path_factory.mktemp("wide-worker"),
                        MINDSTREAM_WEB_HOST="0.0.0.0", MINDSTREAM_WEB_TOKEN=TOKEN) as w:
        yield w


def test_a_worker_bound_to_every_interface_answers_users_only_with_the_token(wide_worker):
    for path in ("/users/u1/interests", "/recall/u1?n=5", "/ui/api/users/u1", "/ui/api/recent"):
        url = wide_worker.url + path
        assert status_of(url) == 401, path
        assert status_of(url, "wrong") == 401, path
        assert status_of(url, TOKEN[:-1]) == 401, path
        assert status_of(url, TOKEN) == 200, path
    # Prometheus and probes need no token.
    assert status_of(wide_worker.url + "/metrics") == 200
    assert status_of(wide_worker.url + "/healthz") == 200
    assert status_of(wide_worker.url + "/ui") == 200  # the inspector's page; its data needs the token
    # The CLI sends the token from the environment.
    result = subprocess.run([sys.executable, "-m", "streams.cli", "recall", "u1", "--n", "5", "--json"],
                            env=wide_worker.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["user_id"] == "u1"
    without = {k: v for k, v in wide_worker.env.items() if k != "MINDSTREAM_WEB_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "streams.cli", "recall", "u1", "--n", "5"], env=without,
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr, refused.stderr
