"""The seven NLB layouts in one table: windows, forward bins, behaviour, PSTHs, trial fields.

Everything that depends on the layout asks this table: the workflow (figures,
bin widths), the NWB checks, `prepare`, `targets` and the synthetic generator.
The values are those of nlb_tools 0.0.4's `make_tensors.PARAMS`;
tests/test_prepare.py checks the table against it, layout by layout. Importing
this module imports nothing outside the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bin widths (ms) that NLB scores, and so the only ones `prepare` and `targets` accept.
BIN_WIDTHS_MS: tuple[int, ...] = (5, 20)
# Trial-table columns every NLB file has, beyond the per-layout ones below.
BASE_TRIAL_FIELDS = ("start_time", "stop_time", "split")


@dataclass(frozen=True)
class NLBLayout:
    """What nlb_tools does with one layout's files. Times are in ms.

    The model's window of a trial is `window_ms` around its `align_field`
    (dmfc_rsg's evaluation trials instead span set_time..go_time, front-padded
    to 1500 ms), followed by `forward_ms` of forward prediction.
    """

    name: str
    align_field: str  # trial-table column the windows (and PSTHs) are aligned to
    window_ms: tuple[int, int]  # (start, end) relative to align_field, e.g. (-250, 450)
    forward_ms: int  # forward prediction after the window
    behavior_series: str | None  # behaviour TimeSeries decoded by nlb_tools; None: none is
    behavior_lag_ms: int | None  # behaviour is read this much later than the spikes
    psth_condition_fields: tuple[str, ...] | None  # trial columns naming a PSTH condition
    train_trial_fields: tuple[str, ...]  # trial columns the train file needs, beyond the base
    test_trial_fields: tuple[str, ...]  # trial columns the test file needs, beyond the base

    @property
    def has_psth(self) -> bool:
        return self.psth_condition_fields is not None

    @property
    def has_behavior_series(self) -> bool:
        return self.behavior_series is not None


_MAZE_FIELDS = ("move_onset_time", "trial_type", "trial_version")


def _maze(name: str, behavior_lag_ms: int) -> NLBLayout:
    """The four MC_Maze layouts differ only in their behaviour lag (and PSTH smoothing)."""
    return NLBLayout(
        name=name,
        align_field="move_onset_time",
        window_ms=(-250, 450),
        forward_ms=200,
        behavior_series="hand_vel",
        behavior_lag_ms=behavior_lag_ms,
        psth_condition_fields=("trial_type", "trial_version"),
        train_trial_fields=_MAZE_FIELDS,
        test_trial_fields=("move_onset_time",),
    )


LAYOUTS: dict[str, NLBLayout] = {
    layout.name: layout
    for layout in (
        _maze("mc_maze", behavior_lag_ms=100),
        NLBLayout(
            name="mc_rtt",
            align_field="start_time",
            window_ms=(0, 600),
            forward_ms=200,
            behavior_series="finger_vel",
            behavior_lag_ms=140,
            psth_condition_fields=None,  # self-paced reaches have no conditions
            train_trial_fields=(),
            test_trial_fields=(),
        ),
        NLBLayout(
            name="area2_bump",
            align_field="move_onset_time",
            window_ms=(-100, 500),
            forward_ms=200,
            behavior_series="hand_vel",
            behavior_lag_ms=-20,
            psth_condition_fields=("cond_dir", "ctr_hold_bump"),
            train_trial_fields=("move_onset_time", "ctr_hold_bump", "cond_dir"),
            test_trial_fields=("move_onset_time",),
        ),
        NLBLayout(
            name="dmfc_rsg",
            align_field="go_time",
            window_ms=(-1500, 0),
            forward_ms=200,
            behavior_series=None,  # trial-level behaviour: is_eye, theta, is_short, ts, tp
            behavior_lag_ms=None,
            psth_condition_fields=("is_eye", "theta", "is_short", "ts"),
            train_trial_fields=(
                "go_time",
                "set_time",
                "is_outlier",
                "is_eye",
                "theta",
                "is_short",
                "ts",
                "tp",
            ),
            test_trial_fields=("go_time", "set_time"),
        ),
        _maze("mc_maze_large", behavior_lag_ms=120),
        _maze("mc_maze_medium", behavior_lag_ms=120),
        _maze("mc_maze_small", behavior_lag_ms=120),
    )
}


# The DANDI dandiset that holds each layout's NLB files: a `dandi` or `local` source that names
# one of these dandisets can only produce its layout.
NLB_DANDISETS: dict[str, str] = {
    "000127": "area2_bump",
    "000128": "mc_maze",
    "000129": "mc_rtt",
    "000130": "dmfc_rsg",
    "000138": "mc_maze_large",
    "000139": "mc_maze_medium",
    "000140": "mc_maze_small",
}


def layout(nlb_layout: str) -> NLBLayout:
    """The table's record of `nlb_layout`; ValueError naming the known layouts if there is none."""
    try:
        return LAYOUTS[nlb_layout]
    except KeyError:
        raise ValueError(
            f"unknown nlb_layout {nlb_layout!r}; expected one of {', '.join(LAYOUTS)}"
        ) from None


def check_bin_width(bin_width_ms: int) -> int:
    """`bin_width_ms` if NLB scores it; ValueError naming the allowed widths otherwise."""
    if bin_width_ms not in BIN_WIDTHS_MS:
        raise ValueError(
            f"bin width {bin_width_ms!r} ms is not one NLB scores; use one of "
            f"{', '.join(map(str, BIN_WIDTHS_MS))}"
        )
    return bin_width_ms


def group_name(nlb_layout: str, bin_width_ms: int) -> str:
    """nlb_tools' group name of a layout at a bin width: `mc_maze` (5 ms), `mc_maze_20` (20 ms)."""
    name = layout(nlb_layout).name
    return name if check_bin_width(bin_width_ms) == 5 else f"{name}_{bin_width_ms}"
