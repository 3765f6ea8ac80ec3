"""The interests inspector's views on the worker's own web server (read-only; the same host and port as the
HTTP API). Plain HTML, CSS and JS from the package's `streams/static/inspector/`: no build step, no CDN.

    GET /ui                          recently written users of this worker, and a search box
    GET /ui/users/{user}             one user's page (400 page for a bad user id); polls the JSON below
    GET /ui/api/users/{user}         streams.inspector.build_user_view's JSON; ?diversity=λ&n=20
                                     (answered by the worker that owns the user, as /recall is)
    GET /ui/api/recent               this worker's recently written users
    GET /ui/static/{name}            the page's files
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from streams.inspector import ItemCatalogue, RecentUsers, error_page, inspect_user
from streams.recall import validate_diversity, validate_n, validate_user_id
from streams.store import StoreError, VectorStore

STATIC_PACKAGE = "streams"
STATIC_DIR = ("static", "inspector")
CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".png": "image/png",
                 ".svg": "image/svg+xml"}
# The pages load only their own files: no inline script, nothing from another origin.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
                "Cache-Control": "no-store"}
RECENT_SHOWN = 50

RouteToOwner = Callable[[Any, Any, str], Awaitable[Any | None]]


def static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the package's inspector folder: name -> (bytes, content type). Read once: a request
    names a file of this dict or gets a 404, so no request path ever reaches the file system."""
    folder = resources.files(STATIC_PACKAGE).joinpath(*STATIC_DIR)
    files = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind("."):] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def register_inspector(app: Any, *, recent: RecentUsers, resources: Callable[[], tuple[VectorStore, Any]],
                       history_of: Callable[[str], Mapping[str, Any] | None],
                       popular: Callable[[int], list], answer_from_the_owner: RouteToOwner,
                       authorized: Callable[[Any], bool] = lambda request: True,
                       default_diversity: float = 0.0) -> None:
    """Add the /ui views to the faust `app`.

    Args:
        recent: the users the worker wrote last (it touches them after each write; /ui lists them).
        resources: blocking (run in a thread): the open VectorStore and the served artifact's Vocabularies;
            raises StoreError while the store is not open.
        history_of: user id -> the user's history-table entry; called on the event loop.
        popular: n -> the cold-start items, as `/recall` uses them; called on the event loop.
        answer_from_the_owner: the worker's routing (`/recall`'s): the owner's reply, or None to answer here.
        authorized: request -> whether it may read user data (the worker's bearer-token rule); the /ui/api
            views answer 401 otherwise, the pages and static files stay open.
        default_diversity: λ of the user JSON when the request names none (the worker's
            MINDSTREAM_RECALL_DIVERSITY, as for /recall).
    """
    files = static_files()
    catalogue: list[ItemCatalogue] = []  # built from the artifact on first use

    def page(view: Any, name: str, status: int = 200) -> Any:
        body, content_type = files[name]
        return view.bytes(body, content_type=content_type, status=status, headers=dict(PAGE_HEADERS))

    @app.page("/ui")
    async def inspector_index(self: Any, request: Any) -> Any:
        return page(self, "index.html")

    @app.page("/ui/users/{user}")
    async def inspector_user_page(self: Any, request: Any, user: str) -> Any:
        try:
            validate_user_id(user)
        except ValueError as exc:
            return self.html(error_page(400, str(exc)), status=400, headers=dict(PAGE_HEADERS))
        return page(self, "user.html")

    @app.page("/ui/static/{name}")
    async def inspector_static(self: Any, request: Any, name: str) -> Any:
        if name not in files:
            return self.html(error_page(404, f"no file {name[:80]!r} in the inspector"), status=404)
        body, content_type = files[name]
        return self.bytes(body, content_type=content_type)

    @app.page("/ui/api/recent")
    async def inspector_recent(self: Any, request: Any) -> Any:
        if not authorized(request):
            return self.json({"error": "missing or wrong bearer token"}, status=401)
        return self.json({"users": recent.latest(RECENT_SHOWN), "now_ms": int(time.time() * 1000)},
                         headers={"Cache-Control": "no-store"})

    @app.page("/ui/api/users/{user}")
    async def inspector_user_json(self: Any, request: Any, user: str) -> Any:
        if not authorized(request):
            return self.json({"error": "missing or wrong bearer token"}, status=401)
        try:
            user_id = validate_user_id(user)
            diversity = validate_diversity(request.query.get("diversity", default_diversity))
            n = validate_n(request.query.get("n", "20"))
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)
        routed = await answer_from_the_owner(self, request, user_id)
        if routed is not None:
            return routed
        history = history_of(user_id)
        cold_start = popular(n)  # on the event loop, as /recall does
        try:
            opened, vocabularies = await asyncio.to_thread(resources)
            if not catalogue:
                catalogue.append(ItemCatalogue.from_vocabularies(vocabularies))
            view = await asyncio.to_thread(inspect_user, opened, user_id, history, catalogue[0],
                                           diversity=diversity, n=n, fallback=cold_start)
        except StoreError as exc:  # an outage: the writer reconnects; say so instead of a 500
            return self.json({"error": str(exc)}, status=503)
        return self.json(view, headers={"Cache-Control": "no-store"})
