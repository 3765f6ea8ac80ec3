// /ui: this worker's recently written users, refreshed every 2 s.
"use strict";

const RECENT_POLL_MS = 2000;

async function refreshRecent() {
  const banner = document.getElementById("error");
  try {
    const response = await fetch("/ui/api/recent", {cache: "no-store"});
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    const rows = body.users.map((u) => el("tr", {"data-user": u.user_id},
      el("td", {}, el("a", {href: "/ui/users/" + encodeURIComponent(u.user_id)}, u.user_id)),
      el("td", {}, utc(u.updated_at_ms)),
      el("td", {class: "num"}, u.writes)));
    document.querySelector("#recent tbody").replaceChildren(...rows);
    document.getElementById("recent-empty").hidden = rows.length > 0;
    banner.hidden = true;
  } catch (error) {
    banner.textContent = "cannot read the worker's recent users: " + error.message;
    banner.hidden = false;
  }
  setTimeout(refreshRecent, RECENT_POLL_MS);
}

renderHeader();
refreshRecent();
