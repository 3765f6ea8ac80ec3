"""The interests inspector in a real headless Chromium, against a real worker (real Kafka broker, Milvus Lite,
onnxruntime tower from a tiny exported artifact): events streamed for a user show up on the open page,
without a reload, as a new interest and a new merged recall; the λ control re-merges; a bad user id gets a
400 page. With MINDSTREAM_SCREENSHOT=1 the test writes docs/inspector.png (the README's screenshot).

Chromium is Debian's `chromium`; `support.chromium.ensure_chromium` installs it with apt-get when missing
(and fails, never skips, when it cannot).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.basics import wait_until
from support.chromium import Chromium, Page, ensure_chromium
from support.worker import Worker, event, get_json

pytestmark = pytest.mark.timeout(300)
REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60  # ceiling against hanging, not a performance assertion
SCREENSHOT = REPO_ROOT / "docs" / "inspector.png"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    path = ensure_chromium()
    with Chromium.start(path, tmp_path_factory.mktemp("chromium") / "profile") as chromium:
        yield chromium


def interest_count(runtime, items: list[str]) -> int:
    """K'u of a history, from the tower itself (offline): the number of valid interests."""
    history, mask = runtime.encode_histories([items])
    return int(runtime.infer(history, mask, runtime.encode_profiles([None])).valid_interest_mask[0].sum())


# What the page shows, read from its DOM: interest cards and merged rows with the slot of each.
READ_PAGE = """(() => ({
  cards: [...document.querySelectorAll('#interests .card')].map(c => ({
      slot: Number(c.dataset.slot), share: c.querySelector('.share-value').textContent,
      top: [...c.querySelectorAll('.top-items li')].map(li => li.dataset.item)})),
  merged: [...document.querySelectorAll('#merged tbody tr')].map(r => [r.dataset.item, r.dataset.slot,
      r.querySelector('.label').textContent]),
  history: [...document.querySelectorAll('#history tbody tr')].map(r => r.dataset.item),
  noInterests: !document.getElementById('no-interests').hidden,
  error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
  marker: window.__sameDocument || null,
}))()"""


def page_state(page: Page) -> dict:
    return page.evaluate(READ_PAGE)


def shown(view: dict) -> list[list[str]]:
    """The merged list of a JSON answer as the page's rows carry it: [item, slot, label]."""
    return [[m["item_id"], "" if m["slot"] is None else str(m["slot"]), m["label"]]
            for m in view["merged"]]


def wait_for_page(worker: Worker, page: Page, predicate, what: str) -> dict:
    try:
        return wait_until(lambda: (lambda s: s if predicate(s) else None)(page_state(page)), WAIT_S,
                          interval=0.3, what=what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; page: {page_state(page)}; worker log:\n{worker.log_tail()}") from None


def test_the_open_page_shows_a_new_interest_and_the_new_recall_without_a_reload(worker: Worker, browser,
                                                                                runtime):
    user = "viewer-1"
    items = list(runtime.item_ids())
    page = browser.new_page(width=1280, height=1250)  # tall enough for the screenshot to show every part
    page.navigate(f"{worker.url}/ui/users/{user}")
    page.evaluate("window.__sameDocument = 'still the first load'")  # gone if the page ever reloads

    # No vectors yet: the "no interests yet" state, with the cold-start list.
    state = wait_for_page(worker, page, lambda s: s["noInterests"], "the no-interests state")
    assert state["cards"] == [] and state["error"] is None

    # Two events: one interest (K'u = max(1, min(K, floor(log2 2))) = 1, confirmed offline below).
    now = time.time()
    first = [(items[0], now - 20), (items[1], now - 19)]
    worker.produce([event(user, item, ts) for item, ts in first])
    assert interest_count(runtime, [item for item, _ in first]) == 1
    state = wait_for_page(worker, page, lambda s: len(s["cards"]) == 1 and len(s["history"]) == 2,
                          "one interest on the page")
    assert not state["noInterests"]
    assert state["history"] == [items[1], items[0]]  # newest first
    one_slot = {card["slot"] for card in state["cards"]}
    assert {row[1] for row in state["merged"]} == {str(s) for s in one_slot}
    assert state["cards"][0]["share"] == "100%"

    # Two more events from other items: four in the history, and a second interest opens.
    second = [(items[len(items) // 2], now - 10), (items[len(items) // 2 + 1], now - 9)]
    history = first + second
    worker.produce([event(user, item, ts) for item, ts in second])
    expected_count = interest_count(runtime, [item for item, _ in history])
    assert expected_count == 2
    state = wait_for_page(worker, page,
                          lambda s: len(s["cards"]) == expected_count and len(s["history"]) == 4,
                          "the new interest on the page")
    assert state["marker"] == "still the first load"  # updated in place: no reload happened
    new_slots = {card["slot"] for card in state["cards"]} - one_slot
    assert len(new_slots) == 1

    # The page's merged list is what the worker serves: the same items, in the same order, as /recall, each
    # labelled with the interest that gave it its score; and the page's JSON agrees row for row.
    served = get_json(f"{worker.url}/recall/{user}?n=20")
    view = get_json(f"{worker.url}/ui/api/users/{user}?diversity=0")
    state = wait_for_page(worker, page, lambda s: s["merged"] == shown(view), "the served recall on the page")
    assert [row[0] for row in state["merged"]] == [item["item_id"] for item in served["items"]]
    assert [row[1] for row in state["merged"]] == [str(item["slot"]) for item in served["items"]]
    assert {card["slot"] for card in state["cards"]} == {interest["slot"] for interest in view["interests"]}
    for card, interest in zip(state["cards"], view["interests"], strict=True):
        assert card["top"] == [item["item_id"] for item in interest["top_items"]]

    if os.environ.get("MINDSTREAM_SCREENSHOT") == "1":
        page.screenshot(SCREENSHOT, colours=64)

    # The λ control: the page re-merges at the new diversity, as the JSON endpoint does.
    page.evaluate("(() => { const s = document.getElementById('diversity'); s.value = '1';"
                  " s.dispatchEvent(new Event('input')); })()")
    diverse = get_json(f"{worker.url}/ui/api/users/{user}?diversity=1")
    assert diverse["diversity"] == 1.0
    wait_for_page(worker, page, lambda s: s["merged"] == shown(diverse), "the λ = 1 merge on the page")
    assert page.evaluate("location.search") == "?diversity=1"
    assert page_state(page)["marker"] == "still the first load"


def test_the_index_lists_the_users_the_worker_wrote(worker: Worker, browser, runtime):
    user = "listed-1"
    worker.produce([event(user, runtime.item_ids()[3], time.time() - 5)])
    page = browser.new_page()
    page.navigate(f"{worker.url}/ui")
    listed = "[...document.querySelectorAll('#recent tbody tr')].map(r => r.dataset.user)"
    rows = wait_until(lambda: (lambda r: r if user in r else None)(page.evaluate(listed)), WAIT_S,
                      interval=0.3, what=f"{user} in the recent users")
    assert rows[0] == user  # the newest write first
    # The search box opens a user's page.
    page.evaluate(f"(() => {{ document.getElementById('search-user').value = '{user}';"
                  " document.querySelector('#search button').click(); })()")
    wait_until(lambda: page.loaded("location.pathname") == f"/ui/users/{user}",
               WAIT_S, interval=0.2, what="the searched user's page")
    wait_until(lambda: page_state(page)["history"] == [runtime.item_ids()[3]], WAIT_S, interval=0.3,
               what=f"{user}'s history on the searched page")


def test_a_bad_user_id_gets_a_400_page(worker: Worker, browser):
    page = browser.new_page()
    url = f"{worker.url}/ui/users/not%20valid"
    page.navigate(url)
    assert page.evaluate("performance.getEntriesByType('navigation')[0].responseStatus") == 400
    message = page.evaluate("document.getElementById('error').textContent")
    assert "user id 'not valid' is not valid" in message and "letters, digits" in message
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{worker.url}/ui/api/users/not%20valid", timeout=10)
    assert raised.value.code == 400 and "is not valid" in json.loads(raised.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{worker.url}/ui/api/users/ok?diversity=-1", timeout=10)
    assert raised.value.code == 400
    assert "diversity must be a number" in json.loads(raised.value.read())["error"]
