"""The Attention page's click handling (no page code here, so tests can import it): the rank
box's order and the selection callback that turns a click on the overlay
(``deref.figures.slide_overlay_figure``) into the inspected patch."""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from deref.explain.patches import top_k_indices
from deref.figures import clicked_patch


def patch_at_rank(scores: np.ndarray, rank: int) -> int:
    """The patch the rank box's 1-based ``rank`` names: ``top_k_indices``' order (highest score
    first, ties by the lower index), the order of the top-k gallery too."""
    return int(top_k_indices(scores, int(rank))[int(rank) - 1])


def rank_of(scores: np.ndarray, idx: int) -> int:
    """1-based rank of patch ``idx`` in the order the rank box uses (inverse of :func:`patch_at_rank`)."""
    order = top_k_indices(scores, len(scores))
    return int(np.flatnonzero(order == idx)[0]) + 1


def apply_click(
    state: MutableMapping, click_key: str, scores: np.ndarray, rank_key: str = "ov_rank"
) -> int | None:
    """Selection callback of the overlay: the clicked patch becomes the inspected rank.
    Returns the patch index, or None when the event picked no patch (the rank is kept)."""
    picked = clicked_patch(state.get(click_key), len(scores))
    if picked is not None:
        state[rank_key] = rank_of(scores, picked)
    return picked
