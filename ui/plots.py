"""Plotly figures: a latent's activation histogram and temporal profile (relative to the activation scale), the map of all latents."""

import numpy as np
import plotly.graph_objects as go

# plotly_white's look, written out: a named template is deep-copied and validated into every figure (~10 ms each);
# layouts go to the constructor at once (update_layout after it validates again, ~5 ms a figure)
AXIS = dict(gridcolor="#ebf0f8", zerolinecolor="#ebf0f8", linecolor="#ebf0f8", automargin=True)
LAYOUT = dict(height=260, margin=dict(l=50, r=20, t=40, b=45), template="none", showlegend=False, paper_bgcolor="white",
              plot_bgcolor="white", font=dict(color="#2a3f5f"), xaxis=AXIS, yaxis=AXIS)


def histogram_figure(counts, vmax: float) -> go.Figure:
    """Bar chart of per-image max activations: `counts` in equal bins from 0 to `vmax`."""
    counts = np.asarray(counts, dtype=np.int64)
    edges = np.linspace(0.0, float(vmax), len(counts) + 1)
    return go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), marker_color="#d95f02"),
                     layout=LAYOUT | dict(title="Max activation per atlas image", xaxis=AXIS | dict(title="activation"),
                                          yaxis=AXIS | dict(title="images")))


def profile_figure(trajectory, injected, residual_share: float, typical: float, recorded_steps: list[int]) -> go.Figure:
    """A latent's feature trajectory and its per-step residual injection, relative to each step's activation scale.

    Scaled by the typical activation s_j when it has one, so the curve reads as how much a typical
    firing (steering strength 1) moves a typical activation at that step; a latent that never
    fired is shown per unit of its code.
    """
    unit, name = (typical, "s·") if typical > 0 else (1.0, "")
    steps = list(recorded_steps)
    traces = [
        go.Scatter(x=steps, y=unit * np.asarray(trajectory, dtype=np.float64), mode="lines+markers", line_color="#1b9e77",
                   name=f"‖{name}φ_t‖: the whole trajectory"),
        go.Scatter(x=steps, y=unit * np.asarray(injected, dtype=np.float64), mode="lines+markers", line_color="#7570b3",
                   line_dash="dot", name=f"‖{name}c_t·D_t‖: injected at step t"),
    ]
    title = f"A typical firing (s = {typical:.3g})" if typical > 0 else "One unit of code (never fired)"
    return go.Figure(traces, layout=LAYOUT | dict(
        showlegend=True, legend=dict(orientation="h", y=-0.5), height=300, title=f"{title} · {residual_share:.0%} residual",
        xaxis=AXIS | dict(title="sampler step"), yaxis=AXIS | dict(title=f"‖{name}φ_t‖ / RMS ‖a_t‖")))


def latent_map_figure(xy, groups: list[str], hover: list[str], frequency) -> go.Figure:
    """Every latent at its map position, one colour per label factor ("unlabelled" last), sized by how often it fires.

    Each point carries its latent id as customdata, which a click on it opens (ui/app.py).
    """
    xy, frequency = np.asarray(xy, dtype=np.float64), np.asarray(frequency, dtype=np.float64)
    size = 4 + 14 * np.sqrt(frequency / max(frequency.max(), 1e-12))
    traces = []
    for name in sorted(set(groups), key=lambda g: (g == "unlabelled", g)):
        ids = np.array([j for j, g in enumerate(groups) if g == name])
        traces.append(go.Scatter(x=xy[ids, 0], y=xy[ids, 1], mode="markers", name=name, customdata=ids.tolist(),
                                 text=[hover[j] for j in ids], hoverinfo="text", marker=dict(size=size[ids], opacity=0.75, color="#b0b0b0" if name == "unlabelled" else None)))
    hidden = AXIS | dict(showticklabels=False, title=None)
    return go.Figure(traces, layout=LAYOUT | dict(
        height=460, showlegend=True, legend=dict(title="label factor"), title="All latents, placed by feature trajectory (UMAP)",
        xaxis=hidden, yaxis=hidden, hovermode="closest"))
