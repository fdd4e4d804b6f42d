"""The portrait says why a fit is missing (#10 item 6): the quick demo's 3 γ put one γ on each side of
the crossover, so no fit was ever drawn and nothing said why."""

from __future__ import annotations

import numpy as np

from app.logic.grid import heatmap_grid
from app.logic.portrait import missing_fit_notes, overlay_curves

from .test_logic_grid_figures import heatmap_frame


def _landscape(gammas: list[float]) -> object:
    """A loss landscape with η* = 0.1·γ (inside the η range) and divergence above η = 10·γ."""
    etas = list(np.geomspace(1e-4, 1e4, 17))
    value, status = [], []
    for e in etas:
        value.append([float((np.log10(e / (0.1 * g))) ** 2 + 0.01) for g in gammas])
        status.append(["diverged" if e > 10 * g else "ok" for g in gammas])
    return heatmap_grid(heatmap_frame(gammas, etas, value, status))


def test_one_gamma_per_side_says_so_for_both_sides() -> None:
    grid = _landscape([0.1, 1.0, 10.0])  # the quick demo's γ
    _curves, fits = overlay_curves(grid, 3)
    assert fits == []
    notes = missing_fit_notes(grid)
    assert len(notes) == 2, notes
    assert "lazy side (γ < 1)" in notes[0] and "(0.1)" in notes[0] and "add γ values below 1" in notes[0]
    assert "rich side (γ > 1)" in notes[1] and "(10)" in notes[1] and "add γ values above 1" in notes[1]


def test_enough_gammas_fit_and_say_nothing() -> None:
    grid = _landscape([0.01, 0.1, 1.0, 10.0, 100.0])
    _curves, fits = overlay_curves(grid, 3)
    assert len(fits) == 4  # η* and η_max, each side
    assert missing_fit_notes(grid) == []


def test_a_side_without_a_diverged_cell_names_eta_max() -> None:
    grid = _landscape([10.0, 100.0])
    notes = missing_fit_notes(grid)
    assert any(n.startswith("No fits on the lazy side") for n in notes)
    # the rich side has both γ with η* and η_max: nothing said about it
    assert not any("rich side" in n for n in notes), notes
    grid = heatmap_grid(heatmap_frame([10.0, 100.0], [0.1, 1.0, 10.0], [[0.3, 0.3], [0.1, 0.1], [0.2, 0.2]],
                                      [["ok", "ok"]] * 3))  # nothing diverged: no η_max anywhere
    notes = missing_fit_notes(grid)
    assert any("No η_max fit on the rich side" in n and "extend η upward" in n for n in notes), notes


def test_seeds_training_in_cells_that_show_a_value_are_counted() -> None:
    # #10 item 7: after Add seeds every cell was ok (its first seed done) and the caption said
    # "running: 0" while 12 seeds trained
    from app.logic.portrait import status_counts

    frame = heatmap_frame([0.1, 1.0], [0.01, 0.1], [[0.05, 0.02], [0.04, 0.01]], [["ok", "ok"], ["ok", "ok"]])
    assert status_counts(heatmap_grid(frame)) == "ok: 4 · diverged: 0 · running: 0 · missing: 0"
    frame.loc[frame.gamma == 0.1, "n_running"] = 3  # three new seeds in each of the two γ = 0.1 cells
    caption = status_counts(heatmap_grid(frame))
    assert caption == "ok: 4 · diverged: 0 · running: 0 · missing: 0 · 6 more seed(s) training in 2 of them"
