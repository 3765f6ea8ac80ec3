// Shared by the inspector's pages: DOM building (text only, never HTML from data), the search box, times.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function utc(ms) {
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

// One colour per interest slot, the same on every part of the page.
const SLOT_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

function slotColour(slot) {
  return slot === null || slot === undefined ? "#888888" : SLOT_COLOURS[slot % SLOT_COLOURS.length];
}

function itemCell(item) {
  const features = Object.entries(item.features || {})
    .map(([name, values]) => `${name}: ${values.join(", ")}`).join(" · ");
  return el("span", {class: "item"},
    el("span", {class: "title"}, item.title || item.item_id),
    item.title ? el("span", {class: "id"}, ` (${item.item_id})`) : null,
    features ? el("span", {class: "features"}, features) : null);
}

// The header of every page: the inspector's name (a link to /ui) and the search box (a user id -> its page).
function renderHeader() {
  const input = el("input", {id: "search-user", name: "user", placeholder: "user id", "aria-label": "user id",
                             required: ""});
  const form = el("form", {id: "search", class: "search", autocomplete: "off"}, input,
                  el("button", {type: "submit"}, "Inspect"));
  document.querySelector("header").replaceChildren(
    el("a", {class: "brand", href: "/ui"}, "mindstream · interests inspector"), form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const user = input.value.trim();
    if (user) window.location.href = "/ui/users/" + encodeURIComponent(user);
  });
}
