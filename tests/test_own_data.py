"""Your own log through `mind-model data --interactions`: column mapping, every time format, buckets, titles,
bad files and flags in one line, and the shipped example through train (1 epoch) and mind-export. The
example's `mind-model data` flags are read from the README's "Your own data", so the README's command is
the one tested.

Budget: ~30 s (one tiny training run and one export on the 60-item shop log in tests/data/own_log/).
"""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.cli import main
from model.data import DataError
from model.datasets import prepare_dataset, prepared_path
from model.logfiles import LogColumns, SideColumns, load_interactions

REPO = Path(__file__).resolve().parents[1]
OWN_LOG = REPO / "tests" / "data" / "own_log"


def readme_data_flags() -> list[str]:
    """The flags of the README's `mind-model data --interactions ... --name shop` command, paths made
    absolute."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Your own data"):]
    lines = section[section.index(".venv/bin/mind-model data"):].splitlines()
    end = next(i for i, line in enumerate(lines) if not line.endswith("\\"))  # continuation lines end in \
    # [2:]: the flags after `mind-model data`
    flags = shlex.split(" ".join(line.rstrip("\\") for line in lines[:end + 1]))[2:]
    name = flags.index("--name")
    del flags[name:name + 2]
    return [str(REPO / f) if f.startswith("tests/") else f for f in flags]


SHOP_FLAGS = readme_data_flags()
SMALL = ["--embedding-dim", "8", "--hidden-dim", "16", "--profile-embedding-dim", "4",
         "--num-negatives", "20", "--epochs", "1", "--no-progress"]

# One log, four ways of writing its times: user a's order is 2, 1, 3 in time, user b's is 5, 4.
TIMES = {"a": [("1", "2024-03-01T10:00:05Z"), ("2", "2024-03-01T10:00:00Z"), ("3", "2024-03-01T10:01:00Z")],
         "b": [("4", "2024-03-02T00:00:00+01:00"), ("5", "2024-03-01 22:30:00")]}


def _epoch(iso: str) -> int:
    """Seconds since the epoch of an ISO-8601 time (no offset = UTC)."""
    stamp = pd.Timestamp(iso)
    return int((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).timestamp())


def _log(path: Path, write_time) -> Path:  # noqa: ANN001
    rows = [(user, item, write_time(iso), "view") for user, pairs in TIMES.items() for item, iso in pairs]
    frame = pd.DataFrame(rows, columns=["who", "what", "when", "kind"])
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mind-model"), err
    return err


@pytest.mark.parametrize(("name", "write_time", "time_format"), [
    ("seconds.csv", _epoch, "seconds"),
    ("millis.tsv", lambda iso: _epoch(iso) * 1000 + 999, "milliseconds"),
    ("iso.csv", lambda iso: iso, "iso8601"),
    ("iso.parquet", lambda iso: iso, "iso8601"),
    ("datetime.parquet", lambda iso: datetime.fromtimestamp(_epoch(iso), UTC), "iso8601"),
])
@pytest.mark.parametrize("given", [False, True])
def test_every_time_format_gives_the_same_sequences(tmp_path: Path, name: str, write_time, time_format: str,  # noqa: ANN001
                                                   given: bool) -> None:
    path = _log(tmp_path / name, write_time)
    notes: list[str] = []
    columns = LogColumns(user="who", item="what", time="when", behavior="kind",
                         time_format=time_format if given else "auto")
    data = load_interactions(path, log_columns=columns, notes=notes)
    sequences = {data.user_ids[u]: [data.item_ids[i] for i in s] for u, s in enumerate(data.sequences)}
    assert sequences == {"a": ["2", "1", "3"], "b": ["5", "4"]}
    b = data.user_ids.index("b")
    assert data.timestamps[b].tolist() == [_epoch("2024-03-01 22:30:00"), _epoch("2024-03-02T00:00:00+01:00")]
    assert data.behavior_vocab == ["<unk>", "view"]
    assert notes == [f"{path}: when read as {time_format} ({'given' if given else 'detected'})"]


def test_shipped_example_maps_columns_buckets_prices_and_keeps_titles_out_of_the_features(tmp_path, capsys):
    assert main(["data", *SHOP_FLAGS, "--name", "shop", "--cache-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "time read as iso8601 (detected)" in printed and "40 users, 60 items" in printed
    data = prepare_dataset("shop", tmp_path)
    assert set(data.item_feature_vocabs) == {"department", "tags", "price"}
    assert set(data.profile_vocabs) == {"country", "age"}
    assert data.behavior_vocab == ["<unk>", "buy", "cart", "view"]
    products = pd.read_csv(OWN_LOG / "products.csv", dtype=str, keep_default_na=False).set_index("product")
    first = data.item_ids[1]
    assert data.item_titles[1] == products.loc[first, "title"]
    assert data.item_feature_vocabs["tags"][1:] == sorted({t for ts in products["tags"]
                                                           for t in ts.split(";") if t})
    # 4 quantile buckets, labelled by range, in value order: an item's bucket holds its price.
    price_vocab = data.item_feature_vocabs["price"]
    assert len(price_vocab) == 5
    lows = [float(label.split("-")[0]) for label in price_vocab[1:]]
    assert lows == sorted(lows)
    for index in range(1, data.num_items + 1):
        low, high = map(float, price_vocab[data.item_features["price"][index, 0]].split("-"))
        price = float(products.loc[data.item_ids[index], "price"])
        assert low * 0.999 <= price <= high * 1.001


def test_side_columns_choose_features_and_single_valued_columns(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu,1,5\nu,2,6\n")
    items = tmp_path / "items.csv"
    items.write_text("sku,name,genre,ignored\n1,One,a|b,x\n2,Two,c,y\n")
    data = load_interactions(log, items_path=items,
                             item_columns=SideColumns(id="sku", features=("genre",), title="name",
                                                      separators={"genre": None}))
    assert list(data.item_features) == ["genre"] and data.item_titles == ["", "One", "Two"]
    assert data.item_feature_vocabs["genre"] == ["<unk>", "a|b", "c"]


@pytest.mark.parametrize(("file_name", "text", "flags", "expected"), [
    ("log.csv", "customer,product,time\nc1,p1,2024-03-01T10:00:00Z\nc1,p2,next tuesday\n", [],
     "log.csv:3:time: time 'next tuesday' is not an ISO-8601 time"),
    ("log.csv", "customer,product,time\nc1,p1,1709287200\nc1,p2,2024-03-01\n", [],
     "log.csv:3:time: time '2024-03-01' is not an integer (expected seconds since the epoch"),
    ("log.csv", "customer,product,time\nc1,p1,2024-03-01\nc1,p2,2024-03-02\n",
     ["--time-format", "milliseconds"],
     "log.csv:2:time: time '2024-03-01' is not an integer (expected milliseconds since the epoch"),
    ("log.tsv", "customer\tproduct\nc1\tp1\n", [],
     "log.tsv:1:time: missing column 'time' (interaction log); found columns: customer, product; name the "
     "column that holds it (mind-model data --user-col, --item-col, --time-col, --behavior-col)"),
    ("log.csv", "customer,product,time\nc1,p1,5\n,p2,6\n", [],
     "log.csv:3:customer: empty customer; every row needs one: fill it or drop the row"),
    ("log.csv", "customer,product,time\nc1,p1,5\nc1,p2,6,7\n", [], "log.csv:3: malformed row"),
])
def test_bad_file_is_one_line_naming_file_line_and_column(tmp_path, capsys, file_name, text, flags, expected):
    path = tmp_path / file_name
    path.write_text(text)
    err = _one_line_error(["data", "--interactions", str(path), "--name", "x", "--user-col", "customer",
                           "--item-col", "product", "--time-col", "time", "--cache-dir", str(tmp_path),
                           *flags], capsys)
    assert f"{tmp_path / expected}" in err


def test_bad_side_file_values_name_their_line_and_the_fix(tmp_path, capsys):
    items = tmp_path / "products.csv"
    items.write_text("product,title,price\nP001,Shoes,12.5\nP002,Socks,cheap\n")
    log = tmp_path / "log.csv"
    log.write_text("product,user_id,timestamp\nP001,u,5\nP002,u,6\nP003,u,7\n")
    base = ["data", "--interactions", str(log), "--items", str(items), "--item-col", "product", "--name", "x",
            "--cache-dir", str(tmp_path)]
    err = _one_line_error([*base, "--bucket", "price=3"], capsys)
    assert f"{items}:3:price: price 'cheap' is not a number; fix the value, or do not bucket price" in err
    err = _one_line_error(base, capsys)
    assert f"{log}:4:product: product 'P003' is not in the item file {items}" in err
    assert "--keep-missing" in err
    assert main([*base, "--keep-missing"]) == 0


def test_log_without_a_user_with_two_behaviours_says_so(tmp_path, capsys):
    log = tmp_path / "sessions.csv"
    log.write_text("session,item_id,timestamp\ns1,a,1\ns2,b,2\ns3,a,3\n")
    err = _one_line_error(["data", "--interactions", str(log), "--user-col", "session", "--name", "sessions",
                           "--cache-dir", str(tmp_path)], capsys)
    assert "no usable user: all 3 users have fewer than 2 behaviours" in err
    assert not prepared_path("sessions", tmp_path).exists()


@pytest.mark.parametrize(("flags", "expected"), [
    (["--bucket", "price"], "--bucket 'price': expected COL=N, e.g. --bucket price=5"),
    (["--bucket", "price=1"], "--bucket price=1: need at least 2 buckets"),
    (["--bucket", "weight=4"], "--bucket weight: no such feature column in"),
    (["--separator", "tags"], "--separator 'tags': expected COL=SEP"),
    (["--item-cols", ","], "--item-cols ',': give comma-separated column names"),
    (["--time-format", "days"], "argument --time-format: invalid choice: 'days'"),
    (["--name", "ml-100k"], "--name 'ml-100k' is a built-in dataset; choose another name"),
    (["--name", "../escape"], "--name '../escape': use 1-64 letters"),
    (["--title-col", "headline"], "products.csv:1:headline: no title column 'headline'"),
])
def test_bad_flag_is_one_line_naming_it(tmp_path, capsys, flags, expected):
    argv = ["data", *SHOP_FLAGS, "--cache-dir", str(tmp_path)]
    if "--name" not in flags:
        argv += ["--name", "shop"]
    if "--title-col" in flags:
        argv.remove("--title-col")
        argv.remove("title")
    assert expected in _one_line_error([*argv, *flags], capsys)


def test_data_needs_a_name_or_a_dataset_and_not_both(tmp_path, capsys):
    assert "--interactions needs --name NAME" in _one_line_error(
        ["data", "--interactions", str(OWN_LOG / "interactions.csv")], capsys)
    assert "name a dataset" in _one_line_error(["data"], capsys)
    assert "either a dataset name" in _one_line_error(
        ["data", "synthetic", "--interactions", str(OWN_LOG / "interactions.csv"), "--name", "x"], capsys)
    assert "--items belongs to your own data" in _one_line_error(
        ["data", "synthetic", "--items", str(OWN_LOG / "products.csv")], capsys)


def test_unknown_data_name_says_how_to_prepare_it(tmp_path, capsys):
    err = _one_line_error(["train", "--data", "nothing-here", "--out", str(tmp_path / "run"),
                           "--cache-dir", str(tmp_path), *SMALL], capsys)
    assert "mind-model data --interactions FILE --name nothing-here" in err


def test_prepared_own_data_trains_evaluates_and_exports_by_name(tmp_path, capsys):
    from export.cli import main as export_main
    from export.runtime import UserTowerRuntime

    cache = tmp_path / "cache"
    assert main(["data", *SHOP_FLAGS, "--name", "shop", "--cache-dir", str(cache)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", "shop", "--cache-dir", str(cache), "--out", str(run), *SMALL]) == 0
    record = json.loads((run / "metrics.json").read_text())["dataset"]
    assert record["source"] == "shop" and record["name"] == "shop" and record["num_items"] == 60
    assert main(["evaluate", str(run), "--cache-dir", str(cache)]) == 0
    capsys.readouterr()

    artifact = tmp_path / "artifact"
    assert export_main([str(run), "--out", str(artifact), "--dataset-cache",
                        str(prepared_path("shop", cache))]) == 0
    printed = capsys.readouterr()
    assert "user histories from" in printed.out + printed.err
    runtime = UserTowerRuntime.load(artifact)
    products = pd.read_csv(OWN_LOG / "products.csv", dtype=str, keep_default_na=False).set_index("product")
    titles = runtime.item_titles()
    assert titles == [products.loc[item, "title"] for item in runtime.item_ids()]
    departments = runtime.item_side_features()["department"]
    assert departments == [[products.loc[item, "department"]] for item in runtime.item_ids()]
    profile = {"country": "DE", "age": runtime.vocab.profile["age"][1]}
    assert np.isfinite(runtime.infer_raw([runtime.item_ids()[:5]], [profile]).interest_vectors).all()


def test_preparing_again_under_the_same_name_replaces_the_data_set(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu,1,5\nu,2,6\n")
    assert main(["data", "--interactions", str(log), "--name", "tiny", "--cache-dir", str(tmp_path)]) == 0
    log.write_text("user_id,item_id,timestamp\nu,1,5\nu,3,6\nu,4,7\n")
    assert main(["data", "--interactions", str(log), "--name", "tiny", "--cache-dir", str(tmp_path)]) == 0
    assert prepare_dataset("tiny", tmp_path).item_ids == ["<pad>", "1", "3", "4"]
    with pytest.raises(DataError):
        prepare_dataset("tiny2", tmp_path)
