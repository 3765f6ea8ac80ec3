// /ui/users/{user}: polls /ui/api/users/{user}?diversity=λ every second and redraws the page from it.
"use strict";

const POLL_MS = 1000;
const userId = decodeURIComponent(window.location.pathname.split("/").pop());
const slider = document.getElementById("diversity");
let pending = null;   // the timer of the next poll
let lastChange = null;  // when the data last differed from the previous poll
let lastBody = "";

function diversity() {
  return Number(slider.value);
}

function renderInterests(view) {
  const cards = view.interests.map((interest) => {
    const colour = slotColour(interest.slot);
    const share = Math.round(100 * interest.share);
    return el("article", {class: "card", "data-slot": interest.slot, style: `border-top-color: ${colour}`},
      el("h3", {}, el("span", {class: "chip", style: `background: ${colour}`}), interest.label),
      el("p", {class: "share"},
        el("span", {class: "share-value"}, `${share}%`),
        ` of the merged list (${interest.merged_count} of ${view.merged.length})`),
      el("div", {class: "bar"}, el("div", {style: `width: ${share}%; background: ${colour}`})),
      el("p", {class: "note"}, `norm ${interest.norm.toFixed(3)} · merge weight ${Math.exp(interest.bias).toFixed(3)}` +
        ` · written ${utc(interest.updated_at_ms)}`),
      el("ol", {class: "top-items"}, ...interest.top_items.map((item) =>
        el("li", {"data-item": item.item_id}, itemCell(item), el("span", {class: "score"}, item.score.toFixed(3))))));
  });
  document.getElementById("interests").replaceChildren(...cards);
  document.getElementById("interest-count").textContent = `(${view.interests.length})`;
  document.getElementById("no-interests").hidden = view.state !== "no_interests";
}

function renderMerged(view) {
  const rows = view.merged.map((item) => el("tr", {"data-item": item.item_id, "data-slot": item.slot ?? ""},
    el("td", {class: "num"}, item.rank),
    el("td", {}, itemCell(item)),
    el("td", {class: "num"}, item.score.toFixed(3)),
    el("td", {}, el("span", {class: "label", style: `background: ${slotColour(item.slot)}`}, item.label))));
  document.querySelector("#merged tbody").replaceChildren(...rows);
  document.getElementById("merged-count").textContent = `(top ${view.merged.length}, λ = ${view.diversity})`;
}

function renderHistory(view) {
  const rows = view.history.map((entry) => el("tr", {"data-item": entry.item_id},
    el("td", {}, utc(entry.ts_ms)), el("td", {}, itemCell(entry))));
  document.querySelector("#history tbody").replaceChildren(...rows);
  const shown = view.history.length < view.history_length ? `, newest ${view.history.length} shown` : "";
  document.getElementById("history-count").textContent = `(${view.history_length} events${shown})`;
}

async function poll() {
  clearTimeout(pending);
  const banner = document.getElementById("error");
  const url = `/ui/api/users/${encodeURIComponent(userId)}?diversity=${diversity()}`;
  try {
    const response = await fetch(url, {cache: "no-store"});
    const text = await response.text();
    const view = JSON.parse(text);
    if (!response.ok) throw new Error(view.error || response.statusText);
    if (text !== lastBody) {
      lastBody = text;
      lastChange = Date.now();
      renderInterests(view);
      renderMerged(view);
      renderHistory(view);
    }
    document.getElementById("status").textContent =
      `model ${view.model_version} · live, polled every ${POLL_MS / 1000} s · last change ${utc(lastChange)} UTC`;
    banner.hidden = true;
  } catch (error) {
    banner.textContent = `cannot read user ${userId}: ${error.message} (retrying)`;
    banner.hidden = false;
  }
  pending = setTimeout(poll, POLL_MS);
}

function onDiversity() {
  document.getElementById("diversity-value").textContent = slider.value;
  const query = new URLSearchParams(window.location.search);
  query.set("diversity", slider.value);
  window.history.replaceState(null, "", `${window.location.pathname}?${query}`);
  poll();
}

const initial = new URLSearchParams(window.location.search).get("diversity");
if (initial !== null && !Number.isNaN(Number(initial))) slider.value = initial;
document.getElementById("diversity-value").textContent = slider.value;
document.getElementById("user-id").textContent = userId;
document.title = `mindstream · ${userId} · interests inspector`;
slider.addEventListener("input", onDiversity);
renderHeader();
poll();
