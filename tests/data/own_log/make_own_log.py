"""Writes the small shop log of the README's "Your own data" example (deterministic; run from the repo root).

    python tests/data/own_log/make_own_log.py

interactions.csv: user, product, ISO-8601 time, event (view / cart / buy); each user browses 2-3 of six
departments, so a multi-interest model has something to find. products.csv: title, department, tags
(multi-valued, ";"-separated) and a numeric price. customers.csv: country and age.
"""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEPARTMENTS = {
    "running": ["Trail shoes", "Road shoes", "Running socks", "Hydration vest", "Sports watch", "Rain jacket",
                "Headlamp", "Energy gels", "Compression tights", "Cap"],
    "kitchen": ["Chef knife", "Cast iron pan", "Cutting board", "Espresso maker", "Milk frother", "Stock pot",
                "Spice rack", "Knife sharpener", "Salad spinner", "Apron"],
    "books": ["Mystery novel", "Cookbook", "Travel guide", "Poetry collection", "Science fiction novel",
              "History of Rome", "Graphic novel", "Field guide to birds", "Chess openings", "Atlas"],
    "garden": ["Pruning shears", "Watering can", "Seed tray", "Garden gloves", "Compost bin", "Hose reel",
               "Tomato seeds", "Bird feeder", "Trowel", "Raised bed kit"],
    "music": ["Acoustic guitar", "Guitar strings", "Capo", "Ukulele", "Metronome", "Headphones",
              "Keyboard stand", "Harmonica", "Music stand", "Drum sticks"],
    "toys": ["Wooden blocks", "Puzzle 500 pieces", "Kite", "Board game", "Yo-yo", "Toy train", "Card game",
             "Marble run", "Plush bear", "Paint set"],
}
TAGS = ["gift", "bestseller", "new", "eco", "sale"]
COUNTRIES = ["DE", "FR", "NL", "SE"]
EVENTS = ["view"] * 6 + ["cart"] * 3 + ["buy"]


def main(seed: int = 7, num_users: int = 40) -> None:
    rng = random.Random(seed)
    products = []
    for department, titles in DEPARTMENTS.items():
        for j, title in enumerate(titles):
            tags = ";".join(sorted(rng.sample(TAGS, rng.randint(0, 2))))
            price = round(rng.uniform(3, 40) * (3 if j % 4 == 0 else 1), 2)
            products.append({"product": f"P{len(products) + 1:03d}", "title": title, "department": department,
                             "tags": tags, "price": price})
    by_department: dict[str, list[str]] = {}
    for p in products:
        by_department.setdefault(p["department"], []).append(p["product"])

    start = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    rows = []
    customers = []
    for u in range(num_users):
        customer = f"c{u + 1:02d}"
        customers.append({"customer": customer, "country": rng.choice(COUNTRIES), "age": rng.randint(18, 70)})
        interests = rng.sample(sorted(by_department), rng.randint(2, 3))
        when = start + timedelta(hours=rng.randint(0, 48))
        for _ in range(rng.randint(6, 14)):
            department = rng.choice(interests)
            when += timedelta(minutes=rng.randint(1, 600))
            rows.append({"customer": customer, "product": rng.choice(by_department[department]),
                         "event": rng.choice(EVENTS), "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")})
    rows.sort(key=lambda r: r["time"])  # a log is written in time order, users interleaved
    _write(HERE / "interactions.csv", ["customer", "product", "event", "time"], rows)
    _write(HERE / "products.csv", ["product", "title", "department", "tags", "price"], products)
    _write(HERE / "customers.csv", ["customer", "country", "age"], customers)


def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
