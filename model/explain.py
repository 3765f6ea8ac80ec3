"""Which behaviour formed which interest: one user's coupling coefficients as a heatmap (the paper's Fig. 5).

Rows are the behaviours the user tower sees (the most recent max_history_length, oldest on top), labelled
with the item and its genres; columns are the user's valid interests. Each row sums to 1 (a behaviour's
softmax over the interests). Next to the heatmap: for each interest, the items it retrieves best (labelled
with the dataset's item id or title and side text), and the merged top list (recall's merge,
config.interest_merge) with the interest that gave each item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.diagnostics import mean_pairwise_cosine, merged_top_n
from model.evaluate import pad_histories, top_n_excluding_history
from model.mind import RetrievalModel


@dataclass
class Explanation:
    user_id: str
    behaviour_labels: list[str]          # one per behaviour the tower saw, oldest first
    coupling: np.ndarray                 # (n, K'u) routing weights of the last round
    interest_top_items: list[list[str]]  # per valid interest: labels of its best items (history excluded)
    interest_top_scores: list[list[float]]  # their inner products with that interest
    merged_top: list[tuple[str, int]]    # the merged top list: (label, interest index 0..K'u-1)
    pairwise_cosine: float               # mean cosine between the valid interests (NaN for K'u = 1)


def _label(data: Any, item: int, width: int = 42) -> str:
    title = str(data.item_ids[item])
    title = title if len(title) <= width else title[: width - 1] + "…"
    return f"{title} [{data.item_side_text(int(item))}]"


def explain_user(model: RetrievalModel, data: Any, user_id: str, top_items: int = 5,
                 merged_items: int = 10) -> Explanation:
    """Coupling coefficients, per-interest and merged recall of one user (raw id), from the whole history."""
    try:
        user = data.user_ids.index(str(user_id))
    except ValueError:
        raise KeyError(f"user {user_id!r} is not in dataset {data.name}; pick one of its user ids "
                       f"(e.g. {data.user_ids[0]!r})") from None
    sequence = data.sequences[user]
    history, mask = pad_histories([sequence], model.config.max_history_length)
    model.eval()
    with torch.no_grad():
        mask_t = torch.from_numpy(mask)
        output = model.interests(torch.from_numpy(history), mask_t,
                                 torch.from_numpy(data.user_profile[user: user + 1]))
        bias = model.merge_bias(output, mask_t).numpy() if model.config.interest_merge == "mixture" else None
        valid = output.valid_interest_mask[0].numpy()
        item_table = model.all_item_embeddings()
        per_interest = output.interest_vectors[0, valid] @ item_table.T                 # (K'u, N + 1)
    n = int(mask[0].sum())
    coupling = output.coupling[0, :n][:, valid].numpy()
    top = top_n_excluding_history(per_interest.numpy(), [sequence] * int(valid.sum()), top_items)
    vectors = output.interest_vectors.numpy()
    merged, winner, _ = merged_top_n(vectors, output.valid_interest_mask.numpy(), item_table.numpy(),
                                     [sequence], min(merged_items, data.num_items), bias,
                                     model.config.logit_temperature)
    return Explanation(
        user_id=str(user_id),
        behaviour_labels=[_label(data, int(i)) for i in history[0, :n]],
        coupling=coupling,
        interest_top_items=[[_label(data, int(i), 30) for i in row] for row in top],
        interest_top_scores=[[float(per_interest[j, i]) for i in row] for j, row in enumerate(top)],
        merged_top=[(_label(data, int(i), 30), int(k)) for i, k in zip(merged[0], winner[0], strict=True)],
        pairwise_cosine=float(mean_pairwise_cosine(vectors, output.valid_interest_mask.numpy())[0]),
    )


def plot_explanation(explanation: Explanation, out_path: str | Path) -> Path:
    """Write the heatmap PNG (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = explanation.coupling.shape
    figure = plt.figure(figsize=(7 + 2.2 * k, 1.2 + 0.22 * n))
    axes = figure.add_axes((0.45, 0.12, 0.05 + 0.08 * k, 0.8))
    image = axes.imshow(explanation.coupling, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    axes.set_yticks(range(n), explanation.behaviour_labels, fontsize=7)
    axes.set_xticks(range(k), [f"interest {j + 1}" for j in range(k)], fontsize=8, rotation=30)
    axes.set_title(f"user {explanation.user_id}: coupling coefficients w (behaviour → interest)", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.08)
    lines = []
    for j, (items, scores) in enumerate(zip(explanation.interest_top_items, explanation.interest_top_scores,
                                            strict=True)):
        lines.append(f"interest {j + 1} retrieves:")
        lines += [f"  {score:6.2f}  {label}" for label, score in zip(items, scores, strict=True)]
    lines.append("merged top list (recall's merge):")
    lines += [f"  [{k + 1}] {label}" for label, k in explanation.merged_top]
    figure.text(0.6 + 0.08 * k, 0.9, "\n".join(lines), fontsize=7, va="top", family="monospace")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return out_path
