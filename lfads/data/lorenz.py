"""The Lorenz system that drives both generators (lfads.data.synthetic, lfads.bench.toydata).

Each generator keeps its own integration scheme (synthetic: one RK4 step per
ms; toydata: several Euler steps per bin); the equations and their parameters
live here once.
"""

from __future__ import annotations

import numpy as np

# The classic chaotic parameters.
SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0


def lorenz_derivative(state: np.ndarray) -> np.ndarray:
    """d(state)/dt of the Lorenz system; state (..., 3) as (x, y, z), in raw Lorenz units."""
    x, y, z = state[..., 0], state[..., 1], state[..., 2]
    return np.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z], axis=-1)


def rk4_step(state: np.ndarray, dt: float) -> np.ndarray:
    """One fourth-order Runge-Kutta step of `dt` Lorenz time units; state (..., 3)."""
    k1 = lorenz_derivative(state)
    k2 = lorenz_derivative(state + dt / 2 * k1)
    k3 = lorenz_derivative(state + dt / 2 * k2)
    k4 = lorenz_derivative(state + dt * k3)
    return state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def euler_step(state: np.ndarray, dt: float) -> np.ndarray:
    """One forward-Euler step of `dt` Lorenz time units; state (..., 3)."""
    return state + dt * lorenz_derivative(state)
