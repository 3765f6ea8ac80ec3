"""Security basics (issue 7): addresses and credentials come from configuration, SASL/TLS reach both Kafka
clients, secrets stay out of flags and reprs, the web server binds to localhost by default.

(The HTTP input validation and the bind address of a running worker are checked against a real worker in
tests/test_reliability_worker.py::test_http_endpoints_bind_to_localhost_and_refuse_bad_input.)
Budget: about 10 s (one subprocess that imports the faust app).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from streams.cli import build_parser
from streams.config import _ENV, SECRET_FIELDS, ConfigError, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SASL_ENV = {"KAFKA_BOOTSTRAP": "broker-a.example:9094,broker-b.example:9094",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "mind",
            "KAFKA_SASL_PASSWORD": "s3cret-pw",
            "MINDSTREAM_MILVUS_TOKEN": "root:milvus-secret"}


def test_defaults_are_localhost_only():
    settings = Settings.from_env({})
    assert settings.bootstrap_servers == ["localhost:9092"]
    assert settings.web_host == "127.0.0.1"
    assert settings.milvus_uri == "./mindstream.db"  # a local file, no server address
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.faust_broker_credentials() is None
    assert Settings.from_env({}).kafka_python_kwargs() == {"bootstrap_servers": ["localhost:9092"],
                                                           "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_settings_reach_kafka_python():
    kwargs = Settings.from_env(dict(SASL_ENV, KAFKA_SSL_CAFILE="/etc/ca.pem")).kafka_python_kwargs()
    assert kwargs == {"bootstrap_servers": ["broker-a.example:9094", "broker-b.example:9094"],
                      "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "mind", "sasl_plain_password": "s3cret-pw",
                      "ssl_cafile": "/etc/ca.pem"}
    ssl_only = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL",
                                  "KAFKA_SSL_CAFILE": "/etc/ca.pem"}).kafka_python_kwargs()
    assert ssl_only == {"bootstrap_servers": ["localhost:9092"], "security_protocol": "SSL",
                        "ssl_cafile": "/etc/ca.pem"}


def test_sasl_ssl_settings_reach_the_faust_app_itself():
    """Import the real streams.worker.app in a child with SASL_SSL in its environment and read what faust
    got."""
    probe = (
        "import json, streams.worker.app as a\n"
        "c = a.app.conf.broker_credentials\n"
        "print(json.dumps({'type': type(c).__name__, 'username': c.username, 'password': c.password,\n"
        "  'mechanism': str(getattr(c.mechanism, 'value', c.mechanism)), 'tls': c.ssl_context is not None,\n"
        "  'broker': [str(u) for u in a.app.conf.broker], 'web_bind': a.app.conf.web_bind}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDSTREAM_", "KAFKA_"))}
    env.update(SASL_ENV)
    result = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got == {"type": "SASLCredentials", "username": "mind", "password": "s3cret-pw",
                   "mechanism": "SCRAM-SHA-512",
                   "tls": True, "broker": ["kafka://broker-a.example:9094", "kafka://broker-b.example:9094"],
                   "web_bind": "127.0.0.1"}


def test_ssl_without_sasl_gives_faust_ssl_credentials_with_the_ca_bundle(tmp_path):
    import faust

    cafile = Path(ssl.get_default_verify_paths().cafile or "")
    if not cafile.is_file():  # a CA bundle of our own: any PEM certificate will do for load_verify_locations
        pytest.fail("this machine has no default CA bundle to point KAFKA_SSL_CAFILE at", pytrace=False)
    credentials = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL",
                                     "KAFKA_SSL_CAFILE": str(cafile)}).faust_broker_credentials()
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED and credentials.context.check_hostname


def test_secrets_come_only_from_the_environment_and_never_show_in_reprs_or_flags():
    settings = Settings.from_env(SASL_ENV)
    assert "s3cret-pw" not in repr(settings) and "milvus-secret" not in repr(settings)
    parser = build_parser()
    flags = set()
    for action in parser._subparsers._group_actions:  # every subcommand's flags
        for sub in action.choices.values():
            flags |= {opt for a in sub._actions for opt in a.option_strings}
    assert not {f for f in flags if re.search("password|token|secret", f)}, "a secret must not be a CLI flag"
    assert set(SECRET_FIELDS) == {"kafka_sasl_password", "milvus_token", "web_token"}
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
        Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "PLAIN"})


HOST_PATTERNS = [
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),  # IPv4 literals
    re.compile(r"\b(?:kafka|https?|grpc|tcp)://([A-Za-z0-9_.\-]+)"),  # URLs with a host
    re.compile(r"bootstrap_servers\s*=\s*[\"']"),  # a literal broker handed to a client
]
ALLOWED_HOSTS = {"127.0.0.1", "0.0.0.0", "localhost", "host", "WEB_HOST"}  # placeholders in help texts


def test_no_address_or_credential_is_hard_coded_in_the_serving_code():
    """Every broker / Milvus address in streams/ and export/ comes from settings; only localhost defaults."""
    found = []
    for path in sorted([*REPO_ROOT.glob("streams/*.py"), *REPO_ROOT.glob("export/*.py")]):
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            for pattern in HOST_PATTERNS:
                for match in pattern.finditer(line):
                    host = match.group(match.lastindex or 0)
                    if host not in ALLOWED_HOSTS and "{" not in line[match.start() : match.end() + 2]:
                        found.append(f"{path.relative_to(REPO_ROOT)}:{line_no}: {line.strip()}")
            if re.search(r"\b(password|passwd|secret|token|api_key)\s*[=:]\s*[\"'][^\"']+[\"']", line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{line_no}: {line.strip()}")
    assert found == []


def test_deployment_files_only_set_settings_the_worker_reads():
    """A misspelt env var in compose / Dockerfile silently falls back to a default (e.g. a local Lite file
    instead of the Milvus server): every MINDSTREAM_/KAFKA_ variable they set must be one the code reads."""
    known = {env for env, _ in _ENV.values()} | {"MINDSTREAM_ORT_THREADS", "MINDSTREAM_CACHE"}
    text = (REPO_ROOT / "deploy" / "docker-compose.yml").read_text()
    worker = text[text.index("\n  worker:"):]
    names = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+):", worker, re.MULTILINE))
    names |= set(re.findall(r"\b(MINDSTREAM_[A-Z0-9_]+|KAFKA_[A-Z0-9_]+)=",
                            (REPO_ROOT / "deploy" / "Dockerfile").read_text()))
    assert names, "no worker environment found in deploy/"
    assert names - known == set(), f"set in deploy/ but read by nothing: {sorted(names - known)}"
