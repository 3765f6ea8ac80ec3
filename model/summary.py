"""A few human-readable lines about an `InteractionData` (what `mind-model data` prints)."""

from __future__ import annotations

import numpy as np

from model.data import InteractionData


def summarize(data: InteractionData) -> str:
    """A few lines describing the dataset: counts, history lengths, time span, ties, features."""
    lengths = np.array([len(s) for s in data.sequences])
    all_ts = np.concatenate(data.timestamps) if data.timestamps else np.zeros(0, np.int64)
    pairs = sum(max(len(t) - 1, 0) for t in data.timestamps)
    ties = sum(int(np.count_nonzero(np.diff(t) == 0)) for t in data.timestamps)
    lines = [
        f"dataset {data.name}: {data.num_users:,} users, {data.num_items:,} items, "
        f"{data.num_interactions:,} interactions",
        f"  history length per user: min {lengths.min()}, median {int(np.median(lengths))}, "
        f"mean {lengths.mean():.1f}, max {lengths.max()}",
    ]
    if all_ts.size:
        first = np.datetime64(int(all_ts.min()), "s").astype("datetime64[D]")
        last = np.datetime64(int(all_ts.max()), "s").astype("datetime64[D]")
        share = ties / pairs if pairs else 0.0
        lines.append(f"  time span {first} .. {last}; {share:.1%} of consecutive behaviours share a "
                     "timestamp")
    for name, vocab in data.item_feature_vocabs.items():
        width = data.item_features[name].shape[1]
        kind = f"multi-valued, up to {width}" if width > 1 else "single-valued"
        lines.append(f"  item feature {name}: {len(vocab) - 1} values ({kind})")
    for name, vocab in data.profile_vocabs.items():
        lines.append(f"  profile field {name}: {len(vocab) - 1} values")
    if data.behavior_vocab is not None:
        lines.append(f"  behaviours: {', '.join(data.behavior_vocab[1:])}")
    if data.num_items:
        title = f" {data.item_titles[1]!r}" if data.item_titles else ""
        side = data.item_side_text(1) or "(no side features)"
        lines.append(f"  e.g. item {data.item_ids[1]!r}{title}: {side}")
    return "\n".join(lines)
