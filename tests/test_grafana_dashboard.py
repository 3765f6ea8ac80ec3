"""The Grafana dashboard (deploy/grafana/) asks Prometheus only for series a live worker's /metrics exports.

A real `mind-stream worker` (real broker, Milvus Lite, onnxruntime) takes one good and one malformed event, so
every family, the DLQ's labelled one included, has samples; then each panel query's metric names are looked
up in that output. The compose wiring (mounts, datasource uid, scrape job) is checked as files: there is no
Docker engine here. Budget: ~30 s (one worker start).
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from support.worker import REPO_ROOT, Worker, event

pytestmark = pytest.mark.timeout(240)
DEPLOY = REPO_ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mindstream.json"
WAIT_S = 60  # ceiling against hanging, not a performance assertion

# What a PromQL expression names that is not a metric: functions and aggregations (followed by "("),
# keywords, and Grafana's own variables.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
# Series names of a family by its type. The classic text format (what prometheus_client serves) names a
# counter's family with its "_total"; OpenMetrics names it without.
_SUFFIXES = {"counter": ("", "_total"), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
             "untyped": ("",)}
# Series Prometheus makes itself for every scrape target.
_SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (`rate(x_bucket[5m])` → {"x_bucket"})."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    # label lists
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($__rate_interval)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name, rest = match.group(0), text[match.end():]
        if name.lower() in _KEYWORDS or rest.lstrip().startswith("("):
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3)
        names.add(name)
    return names


def exposition(text: str) -> tuple[dict[str, str], set[str]]:
    """Prometheus text format → (family → type from `# TYPE`, names of the samples present)."""
    types, samples = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            types[family] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return types, samples


def family_of(name: str, types: dict[str, str]) -> str | None:
    """The family a series name belongs to (`x_bucket` → `x` for a histogram x), or None if there is none."""
    for family, kind in types.items():
        suffixes = _SUFFIXES.get(kind, ("",))
        if any(name == family + suffix and not (suffix and family.endswith(suffix)) for suffix in suffixes):
            return family
    return None


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard, rows' nested panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            queries.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))

    walk(dashboard["panels"])
    return queries


# --- pure: the parser --------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "names"), [
    ("histogram_quantile(0.95, sum by (le) (rate(mindstream_tower_seconds_bucket[$__rate_interval])))",
     {"mindstream_tower_seconds_bucket"}),
    ('sum by (kind) (rate(mindstream_events_dlq_total{kind!="x y"}[5m]))', {"mindstream_events_dlq_total"}),
    ("sum(rate(a_sum[1m])) / sum(rate(a_count[1m])) > 1e3", {"a_sum", "a_count"}),
    ('sum(up{job="mindstream-worker"}) or on() vector(0)', {"up"}),
    ("max without (instance) (mindstream_store_down) and ignoring(x) "
     "mindstream_assigned_partitions offset 5m",
     {"mindstream_store_down", "mindstream_assigned_partitions"}),
])
def test_promql_parser_finds_the_metric_names(expr, names):
    assert promql_metric_names(expr) == names


def test_series_names_map_to_their_family_by_type():
    types = {"h": "histogram", "c_total": "counter", "o": "counter", "g": "gauge"}
    names = ("h_bucket", "h_count", "c_total", "o_total", "g", "c_total_total", "c", "h", "g_total")
    assert [family_of(n, types) for n in names] == ["h", "h", "c_total", "o", "g", None, None, None, None]


# --- the files: one dashboard, wired into compose ------------------------------------------------------


def test_dashboard_panels_all_query_the_provisioned_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uid = re.search(r"^\s+uid:\s*(\S+)", datasource, re.MULTILINE).group(1)
    assert "url: http://prometheus:9090" in datasource
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert {t["datasource"]["uid"] for t in panel["targets"]} | {panel["datasource"]["uid"]} == {uid}


def test_compose_mounts_the_dashboard_and_scrapes_the_workers_on_localhost_only_ports():
    compose = (DEPLOY / "docker-compose.yml").read_text()
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in compose
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "mindstream.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    ports = re.findall(r'^\s+- "([^"]+)"$', compose[compose.index("services:"):compose.index("\nvolumes:")],
                       re.MULTILINE)
    published = [p for p in ports if re.fullmatch(r"[\d.:]+", p)]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    scrape = (DEPLOY / "prometheus.yml").read_text()
    job = re.search(r"job_name:\s*(\S+)", scrape).group(1)
    assert re.search(r"names:\s*\[worker\]", scrape) and "port: 6066" in scrape
    up_jobs = {m for _, expr in dashboard_queries() for m in re.findall(r'up\{job="([^"]+)"\}', expr)}
    assert up_jobs == {job}


# --- live: every name is one /metrics really exports -------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_text(worker: Worker, runtime) -> str:  # noqa: ANN001 - a fixture argument
    """The live worker's /metrics after one good and one malformed event went through it."""
    worker.produce([event("dash-user", runtime.item_ids()[0], 1_700_000_000.0), (b"dash-user", b"not json")])
    worker.wait_for(lambda: worker.metric("mindstream_users_recomputed_total") >= 1
                    and worker.metric("mindstream_events_dlq_total") >= 1,
                    WAIT_S, "one update and one DLQ entry")
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=10) as response:
        return response.read().decode()


def test_every_dashboard_query_names_series_the_live_worker_exports(metrics_text):
    types, samples = exposition(metrics_text)
    unknown = []
    for title, expr in dashboard_queries():
        for name in promql_metric_names(expr) - _SCRAPE_SERIES:
            if name not in samples or family_of(name, types) is None:
                unknown.append(f"{title!r}: {name} (in {expr})")
    assert unknown == [], "names /metrics does not export:\n" + "\n".join(unknown)


def test_every_worker_metric_family_has_a_panel(metrics_text):
    types, _ = exposition(metrics_text)
    ours = {f for f in types if f.startswith("mindstream_") and not f.endswith("_created")}
    used = {family_of(n, types) for _, expr in dashboard_queries() for n in promql_metric_names(expr)}
    assert ours and ours - used == set(), f"worker metrics without a panel: {sorted(ours - used)}"
