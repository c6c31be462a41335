"""A small 2-D shallow-water solver (NumPy) that makes flood sequences to train and test on.

The shallow-water equations over a bed ``z(x, y)``, conserved variables ``U = (h, hu, hv)``::

    h_t + (hu)_x + (hv)_y = 0
    (hu)_t + (hu^2 + g h^2 / 2)_x + (huv)_y = -g h z_x - friction
    (hv)_t + (huv)_x + (hv^2 + g h^2 / 2)_y = -g h z_y - friction

First-order finite volumes on a square grid with the Rusanov (local Lax-Friedrichs) flux and the
hydrostatic reconstruction of Audusse et al. 2004 ("A fast and stable well-balanced scheme with
hydrostatic reconstruction for shallow water flows", SIAM J. Sci. Comput. 25(6)): the scheme keeps
depths non-negative, handles wetting and drying, and keeps a lake at rest exactly at rest over
any bed (both tested). Manning friction is applied semi-implicitly (it can only slow the flow).
The time step follows the CFL condition. Walls reflect; an ``inflow`` side instead holds a water
level that may rise with time (water enters over that side).

Two scenarios over random smooth beds (:func:`random_bathymetry`): a **dam break** (a reservoir
behind a straight line released at t = 0; Ritter's 1892 solution gives its front speed over a dry
flat bed, ``2 sqrt(g h0)``, also tested) and **rising water** (a boundary level that climbs and
floods the low ground). Outputs are frames ``(T, H, W, 4)``: depth, velocity x, velocity y and the
(static) bed elevation, in metres and metres per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "CHANNELS",
    "GRAVITY",
    "Simulation",
    "dam_break",
    "random_bathymetry",
    "rising_water",
    "simulate",
]

GRAVITY = 9.81
DRY = 1e-4  # metres: below this a cell has no velocity
CHANNELS = ("depth", "velocity_x", "velocity_y", "bathymetry")
Side = Literal["west", "east", "north", "south"]


@dataclass(frozen=True)
class Simulation:
    """Frames (T, H, W, 4) of depth, velocity x, velocity y, bed; their spacing in s and m."""

    frames: np.ndarray
    dt: float
    dx: float
    scenario: str


class State(NamedTuple):
    """Conserved variables on the grid: depth and the two momenta."""

    h: np.ndarray
    hu: np.ndarray
    hv: np.ndarray


class Face(NamedTuple):
    """One side of a set of faces: depth, normal and tangential velocity, bed."""

    h: np.ndarray
    un: np.ndarray
    ut: np.ndarray
    z: np.ndarray


_GHOST: dict[str, tuple[Any, Any]] = {
    "west": ((slice(None), 0), (slice(None), 1)),
    "east": ((slice(None), -1), (slice(None), -2)),
    "north": ((0, slice(None)), (1, slice(None))),
    "south": ((-1, slice(None)), (-2, slice(None))),
}


def _velocities(state: State) -> tuple[np.ndarray, np.ndarray]:
    wet = state.h > DRY
    safe = np.where(wet, state.h, 1.0)
    return np.where(wet, state.hu / safe, 0.0), np.where(wet, state.hv / safe, 0.0)


def _pad(
    state: State, z: np.ndarray, inflow: Side | None, level: float
) -> tuple[State, np.ndarray]:
    """One ghost cell a side: walls mirror depth and bed and negate the normal momentum; the
    inflow side holds the free surface at ``level`` with the velocity of the cell inside."""
    h, hu, hv, z = (np.pad(a, 1, mode="edge") for a in (*state, z))
    hu[:, 0], hu[:, -1] = -hu[:, 1], -hu[:, -2]
    hv[0, :], hv[-1, :] = -hv[1, :], -hv[-2, :]
    if inflow is not None:
        ghost, inner = _GHOST[inflow]
        u_in, v_in = _velocities(State(h[inner], hu[inner], hv[inner]))
        h[ghost] = np.maximum(level - z[ghost], 0.0)
        hu[ghost] = h[ghost] * u_in
        hv[ghost] = h[ghost] * v_in
    return State(h, hu, hv), z


def _fluxes(left: Face, right: Face) -> tuple[np.ndarray, ...]:
    """Fluxes across faces between left and right states (normal direction ``un``).

    Returns the mass flux, the normal and tangential momentum fluxes, and the well-balancing
    corrections of the normal momentum for the left and the right cell (Audusse et al. 2004).
    """
    g = GRAVITY
    zface = np.maximum(left.z, right.z)
    hl = np.maximum(0.0, left.h + left.z - zface)
    hr = np.maximum(0.0, right.h + right.z - zface)
    ul, ur, vl, vr = left.un, right.un, left.ut, right.ut
    speed = np.maximum(np.abs(ul) + np.sqrt(g * hl), np.abs(ur) + np.sqrt(g * hr))
    mass = 0.5 * (hl * ul + hr * ur) - 0.5 * speed * (hr - hl)
    normal = 0.5 * (hl * ul**2 + 0.5 * g * hl**2 + hr * ur**2 + 0.5 * g * hr**2) - (
        0.5 * speed * (hr * ur - hl * ul)
    )
    tangential = 0.5 * (hl * ul * vl + hr * ur * vr) - 0.5 * speed * (hr * vr - hl * vl)
    left_fix = 0.5 * g * (left.h**2 - hl**2)
    right_fix = 0.5 * g * (right.h**2 - hr**2)
    return mass, normal, tangential, left_fix, right_fix


def _step(
    state: State,
    z: np.ndarray,
    *,
    dx: float,
    cfl: float,
    manning: float,
    inflow: Side | None,
    level: float,
    dt_max: float,
) -> tuple[State, float]:
    """One explicit step of at most ``dt_max``; returns the new state and the step taken."""
    g = GRAVITY
    h, hu, hv = state
    u, v = _velocities(state)
    wave = float(np.max(np.maximum(np.abs(u), np.abs(v)) + np.sqrt(g * h)))
    dt = min(dt_max, cfl * dx / max(wave, 1e-6))
    padded, zp = _pad(state, z, inflow, level)
    hp = padded.h
    up, vp = _velocities(padded)
    inner = slice(1, -1)

    # Faces between columns (x direction): normal velocity u, tangential v.
    mass_x, mom_x, tan_x, left_x, right_x = _fluxes(
        Face(hp[inner, :-1], up[inner, :-1], vp[inner, :-1], zp[inner, :-1]),
        Face(hp[inner, 1:], up[inner, 1:], vp[inner, 1:], zp[inner, 1:]),
    )
    # Faces between rows (y direction): normal velocity v, tangential u.
    mass_y, mom_y, tan_y, left_y, right_y = _fluxes(
        Face(hp[:-1, inner], vp[:-1, inner], up[:-1, inner], zp[:-1, inner]),
        Face(hp[1:, inner], vp[1:, inner], up[1:, inner], zp[1:, inner]),
    )
    r = dt / dx
    # A cell's east face is face j+1 (it is that face's left cell), its west face is face j.
    h_new = h - r * (mass_x[:, 1:] - mass_x[:, :-1] + mass_y[1:, :] - mass_y[:-1, :])
    hu_new = hu - r * (
        (mom_x[:, 1:] + left_x[:, 1:])
        - (mom_x[:, :-1] + right_x[:, :-1])
        + tan_y[1:, :]
        - tan_y[:-1, :]
    )
    hv_new = hv - r * (
        (mom_y[1:, :] + left_y[1:, :])
        - (mom_y[:-1, :] + right_y[:-1, :])
        + tan_x[:, 1:]
        - tan_x[:, :-1]
    )
    h_new = np.maximum(h_new, 0.0)
    dry = h_new <= DRY
    hu_new[dry] = 0.0
    hv_new[dry] = 0.0
    if manning > 0:
        # Semi-implicit Manning friction: divides the momentum, never reverses it.
        u, v = _velocities(State(h_new, hu_new, hv_new))
        speed = np.sqrt(u**2 + v**2)
        depth = np.maximum(h_new, DRY)
        factor = 1.0 + dt * g * manning**2 * speed / depth ** (4.0 / 3.0)
        hu_new /= factor
        hv_new /= factor
    return State(h_new, hu_new, hv_new), dt


def simulate(
    depth: np.ndarray,
    bed: np.ndarray,
    *,
    frames: int,
    frame_dt: float,
    dx: float = 1.0,
    cfl: float = 0.45,
    manning: float = 0.0,
    inflow: Side | None = None,
    level: tuple[float, float] = (0.0, 0.0),
    scenario: str = "custom",
) -> Simulation:
    """Run from ``depth`` (still water) over ``bed`` and keep ``frames`` frames ``frame_dt`` apart
    (the first is the initial state). ``inflow`` holds the free surface of that side at a level
    going linearly from ``level[0]`` to ``level[1]`` over the run."""
    z = np.asarray(bed, np.float64)
    h = np.asarray(depth, np.float64).copy()
    state = State(h, np.zeros_like(h), np.zeros_like(h))
    out = np.zeros((frames, *h.shape, 4), np.float32)
    duration = max(frame_dt * (frames - 1), 1e-9)
    t = 0.0
    for f in range(frames):
        target = f * frame_dt
        while t < target - 1e-9:
            surface = level[0] + (level[1] - level[0]) * min(t / duration, 1.0)
            state, dt = _step(
                state,
                z,
                dx=dx,
                cfl=cfl,
                manning=manning,
                inflow=inflow,
                level=surface,
                dt_max=target - t,
            )
            t += dt
        u, v = _velocities(state)
        out[f, ..., 0], out[f, ..., 1], out[f, ..., 2], out[f, ..., 3] = state.h, u, v, z
    return Simulation(out, frame_dt, dx, scenario)


def random_bathymetry(size: int, rng: np.random.Generator, relief: float = 1.0) -> np.ndarray:
    """A smooth random bed (size, size) in metres, 0 at its lowest: a tilted plane plus low-pass
    filtered noise (a Gaussian spectrum), so there are valleys for water to run down."""
    noise = rng.normal(size=(size, size))
    k = np.fft.fftfreq(size)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-((kk / 0.06) ** 2))))
    smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-9)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    plane = np.cos(angle) * x + np.sin(angle) * y
    plane = (plane - plane.min()) / max(float(np.ptp(plane)), 1e-9)
    bed = relief * (0.6 * smooth + 0.4 * plane)
    return np.asarray(bed - bed.min(), np.float64)


def dam_break(
    size: int, rng: np.random.Generator, *, frames: int, frame_dt: float, dx: float = 1.0
) -> Simulation:
    """A reservoir behind a random straight line (a third to a half of the domain) released."""
    bed = random_bathymetry(size, rng, relief=float(rng.uniform(0.3, 1.0)))
    y, x = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * (x - size / 2) + np.sin(angle) * (y - size / 2)) / size
    reservoir = along < rng.uniform(-0.2, 0.0)
    surface = float(np.percentile(bed, 60) + rng.uniform(0.8, 1.6))
    tail = float(np.percentile(bed, 10))  # a little standing water downstream
    depth = np.where(reservoir, np.maximum(surface - bed, 0.0), np.maximum(tail - bed, 0.0))
    return simulate(
        depth, bed, frames=frames, frame_dt=frame_dt, dx=dx, manning=0.02, scenario="dam_break"
    )


def rising_water(
    size: int, rng: np.random.Generator, *, frames: int, frame_dt: float, dx: float = 1.0
) -> Simulation:
    """A boundary whose level climbs from the low ground to above most of the bed."""
    bed = random_bathymetry(size, rng, relief=float(rng.uniform(0.5, 1.2)))
    side: Side = ("west", "east", "north", "south")[int(rng.integers(4))]
    start = float(np.percentile(bed, 20))
    depth = np.maximum(start - bed, 0.0)
    end = float(np.percentile(bed, 90) + rng.uniform(0.2, 0.6))
    return simulate(
        depth,
        bed,
        frames=frames,
        frame_dt=frame_dt,
        dx=dx,
        manning=0.02,
        inflow=side,
        level=(start, end),
        scenario="rising_water",
    )
