"""Every figure of the `figures` rule: its name, when it exists, and its report caption.

The workflow's outputs and the figures rule's report entries (workflow/rules/)
and the makers in lfads.evaluation.figures all follow `FIGURES`; a test checks
that each listed figure has a maker and a caption file, and the other way
round. This module imports only the layout table, so the workflow reads it
while it parses.
"""

from __future__ import annotations

from dataclasses import dataclass

from lfads.data.layouts import layout


@dataclass(frozen=True)
class Figure:
    """One PNG, results/<dataset>/<phase>/figures/<name>.png, and what it needs to exist."""

    name: str
    needs_val_phase: bool = False  # drawn from nlb_tools' targets, which only the val phase has
    needs_truth: bool = False  # drawn from the synthetic ground truth
    needs_psth: bool = False  # needs the layout's PSTH conditions
    needs_behavior_series: bool = False  # needs the layout's decoded behaviour series

    @property
    def title(self) -> str:
        """The figure's label in the report: its place in FIGURES (reading order) and its name,
        so that the report, which sorts labels as text, lists figures in that order."""
        return f"{FIGURES.index(self) + 1:02d} {self.name.removeprefix('best_').replace('_', ' ')}"

    @property
    def caption(self) -> str:
        """The report's caption file of this figure, in workflow/report/."""
        return f"{self.name}.rst"

    def exists(self, phase: str, nlb_layout: str, has_truth: bool) -> bool:
        """Whether the figures rule draws this figure for a dataset."""
        spec = layout(nlb_layout)
        return (
            (phase == "val" or not self.needs_val_phase)
            and (has_truth or not self.needs_truth)
            and (spec.has_psth or not self.needs_psth)
            and (spec.has_behavior_series or not self.needs_behavior_series)
        )


# In the report's reading order: the result per neuron, what the model infers, then the search.
FIGURES: tuple[Figure, ...] = (
    Figure("best_neuron_co_bps", needs_val_phase=True),
    Figure("best_raster"),
    Figure("best_psth", needs_val_phase=True, needs_psth=True),
    Figure("best_velocity", needs_val_phase=True, needs_behavior_series=True),
    Figure("best_rates_vs_truth", needs_truth=True),
    Figure("best_factors"),
    Figure("best_inputs"),
    Figure("training_curves"),
    Figure("metrics_vs_hyperparameters"),
)


def figures_for(phase: str, nlb_layout: str, has_truth: bool) -> list[Figure]:
    """The figures the figures rule draws for a dataset, in `FIGURES` order."""
    return [figure for figure in FIGURES if figure.exists(phase, nlb_layout, has_truth)]
