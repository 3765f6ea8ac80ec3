"""The worker's HTTP views, and the routing of a user's request to the worker that owns the user.

    GET /recall/{user}?n=50&exclude_seen=false&diversity=λ
                                                 RecallResult as JSON (400 {"error"} on bad input);
                                                 λ defaults to MINDSTREAM_RECALL_DIVERSITY
    GET /users/{user}/interests                  the user's stored interest rows
    GET /metrics                                 Prometheus text
    GET /healthz                                 ok / starting (503) / degraded (store down); the event loop
    GET /ui, /ui/users/{user}, /ui/api/...       the interests inspector (streams/inspector_web.py)

A recall or an interests request is answered where the user's history lives: the worker that owns the
user's partition (faust's assignor metadata; each worker announces MINDSTREAM_WEB_URL). Any other worker
passes the request there, once: the `ROUTED_HEADER` stops a ping-pong while a rebalance settles.

With MINDSTREAM_WEB_TOKEN set (required when the server binds beyond loopback), /recall and /users need
`Authorization: Bearer TOKEN` (401 otherwise), and so does the inspector's /ui/api; the `ROUTED_HEADER`
counts only on a request that carries it; workers send both when they pass a request on. /metrics, /healthz
and the inspector's pages and static files stay open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import faust

from streams import metrics
from streams.config import Settings
from streams.inspector import RecentUsers
from streams.inspector_web import register_inspector
from streams.store import StoreError
from streams.worker.batches import Popularity
from streams.worker.service import WorkerService

ROUTED_HEADER = "X-Mindstream-Routed"


def event_loop_name() -> str:
    """The running event loop's package: "uvloop" or "asyncio" (MINDSTREAM_EVENT_LOOP)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


# --- access (issue 16): bearer token and the routed header -------------------------------------------


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `token` (constant-time); always True without a token."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def routed_here(headers: Mapping[str, str], token: str) -> bool:
    """Whether a request was passed on by another worker: the routed header, trusted only with the token."""
    return bool(headers.get(ROUTED_HEADER)) and bearer_ok(headers.get("Authorization"), token)


def forwarding_headers(token: str) -> dict[str, str]:
    """What a worker sends when it passes a request to the owner."""
    return {ROUTED_HEADER: "1", **({"Authorization": f"Bearer {token}"} if token else {})}


def unauthorized(view: Any) -> Any:
    return view.json({"error": "missing or wrong bearer token: send Authorization: Bearer "
                               "$MINDSTREAM_WEB_TOKEN"}, status=401, headers={"WWW-Authenticate": "Bearer"})


# --- routing -------------------------------------------------------------------------------------------


def partition_of(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives the raw user-id key.

    Not faust's `table_route`: it hashes the changelog key, which faust JSON-encodes, while a user's events
    (and so its table entry) sit where the producer's partitioner put the raw key. Producers must use
    murmur2 (the Java and kafka-python default; librdkafka clients set partitioner=murmur2_random).
    """
    from aiokafka.partitioner import murmur2

    return (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


def owner_of(user_id: str, owners: Mapping[int, str], partitions: int) -> str | None:
    """Base URL of the worker that owns `user_id`'s partition; None before the first assignment."""
    return owners.get(partition_of(user_id, partitions))


def forward_to(owner: str | None, own_url: str, already_routed: bool) -> str | None:
    """Where to pass a request: the owner's URL, or None to answer here (no owner known, this worker owns
    the user, or the request was passed here already)."""
    if already_routed or owner is None or urlsplit(owner)[:2] == urlsplit(own_url)[:2]:
        return None
    return owner


def parse_flag(name: str, raw: str) -> bool:
    """A query-string switch: true/false, 1/0, yes/no."""
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw[:40]!r}")


def jsonable(value: Any) -> Any:
    """Dataclasses, numpy scalars/arrays and lists of them → plain JSON values."""
    import numpy as np

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def register_views(app: faust.App, *, settings: Settings, service: WorkerService, histories: Any,
                   popularity: Popularity, owners: Callable[[], Mapping[int, str]],
                   recent_users: RecentUsers) -> None:
    """Add the views to `app`; `owners()` maps each partition to the base URL of the worker owning it;
    `recent_users` are the users this worker wrote last (the inspector's /ui lists them)."""
    settings.check_web_access()  # `mind-stream worker` says so in one line before faust starts

    async def answer_from_the_owner(view: Any, request: Any, user_id: str) -> Any | None:
        """The owning worker's reply when another worker owns `user_id`'s history; None to answer here."""
        owner = forward_to(owner_of(user_id, owners(), settings.partitions), settings.web_url,
                           routed_here(request.headers, settings.web_token))
        if owner is None:
            return None
        import aiohttp

        url = owner.rstrip("/") + request.path_qs
        try:
            async with app.http_client.get(url, headers=forwarding_headers(settings.web_token),
                                           timeout=aiohttp.ClientTimeout(total=30)) as response:
                return view.bytes(await response.read(), content_type=response.content_type,
                                  status=response.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = f"the worker that owns user {user_id} ({owner}) did not answer: {exc!r}"
            return view.json({"error": error}, status=503)

    def store_or_error() -> Any:
        """The store, or StoreError while it has not been opened yet."""
        if service.resources is None:
            raise StoreError(service.outage.last_error
                             or "the worker is starting: the vector store is not open yet")
        return service.resources.store

    @app.page("/recall/{user}")
    async def recall_view(self: Any, request: Any, user: str) -> Any:
        """The user's top-N items by max inner product over their interests; with exclude_seen=true, the
        items in the user's history are left out (still an exact top-N); diversity=λ > 0 trades score for
        coverage of the user's interests (default: the worker's MINDSTREAM_RECALL_DIVERSITY)."""
        from streams.recall import recall, validate_diversity, validate_n, validate_user_id

        if not bearer_ok(request.headers.get("Authorization"), settings.web_token):
            return unauthorized(self)
        try:
            user_id = validate_user_id(user)
            n = validate_n(request.query.get("n", "50"))
            exclude_seen = parse_flag("exclude_seen", request.query.get("exclude_seen", "false"))
            diversity = validate_diversity(request.query.get("diversity", settings.recall_diversity))
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)
        routed = await answer_from_the_owner(self, request, user_id)
        if routed is not None:
            return routed
        started = time.perf_counter()
        history = (histories.get(user_id) or {}) if exclude_seen else {}
        seen = {item[0] for item in history.get("items", [])}
        popular = popularity.top(n + len(seen), histories.values)  # on the event loop (see Popularity)
        try:
            store = store_or_error()
            result = await asyncio.to_thread(recall, store, user_id, n, fallback=popular, exclude=seen,
                                             diversity=diversity)
        except StoreError as exc:  # an outage: the writer reconnects; say so instead of a 500
            return self.json({"error": str(exc)}, status=503)
        metrics.RECALL_SECONDS.observe(time.perf_counter() - started)
        return self.json(jsonable(result))

    @app.page("/users/{user}/interests")
    async def interests_view(self: Any, request: Any, user: str) -> Any:
        """The user's stored interest rows (slot, model version, event time, vector)."""
        from streams.recall import validate_user_id

        if not bearer_ok(request.headers.get("Authorization"), settings.web_token):
            return unauthorized(self)
        try:
            user_id = validate_user_id(user)
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)
        routed = await answer_from_the_owner(self, request, user_id)
        if routed is not None:
            return routed
        try:
            store = store_or_error()
            rows = (await asyncio.to_thread(store.get_user_interests, user_id))[user_id]
        except StoreError as exc:  # an outage: the writer reconnects; say so instead of a 500
            return self.json({"error": str(exc)}, status=503)
        history = histories.get(user_id) or {"items": []}
        return self.json({"user_id": user_id, "interests": jsonable(rows),
                          "history_length": len(history["items"])})

    register_inspector(app, recent=recent_users, history_of=histories.get,
                       resources=lambda: (store_or_error(), service.resources.runtime.vocab),
                       popular=lambda n: popularity.top(n, histories.values),
                       answer_from_the_owner=answer_from_the_owner,
                       authorized=lambda request: bearer_ok(request.headers.get("Authorization"),
                                                            settings.web_token),
                       default_diversity=settings.recall_diversity)

    @app.page("/metrics")
    async def metrics_view(self: Any, request: Any) -> Any:
        body, content_type = metrics.render()
        return self.bytes(body, content_type=content_type.split(";")[0])

    @app.page("/healthz")
    async def healthz_view(self: Any, request: Any) -> Any:
        resources = service.resources
        status = 200 if resources is not None else 503
        about = {"model_version": resources.model_version if resources is not None else None,
                 "event_loop": event_loop_name()}
        if service.outage.is_down:
            # Alive and retrying (a restart would not help): 200 once serving, so a liveness probe leaves it
            # running; 503 while the store could not be opened yet at start (not ready).
            return self.json({"status": "degraded", **about,
                              "store_down_s": round(service.outage.down_for_s(), 1),
                              "error": service.outage.last_error}, status=status)
        return self.json({"status": "ok" if resources is not None else "starting", **about}, status=status)
