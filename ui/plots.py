"""Plotly figures of a latent's statistics: activation histogram and temporal profile."""

import numpy as np
import plotly.graph_objects as go

LAYOUT = dict(height=260, margin=dict(l=50, r=20, t=40, b=45), template="plotly_white", showlegend=False)


def histogram_figure(counts, vmax: float) -> go.Figure:
    """Bar chart of per-image max activations: `counts` in equal bins from 0 to `vmax`."""
    counts = np.asarray(counts, dtype=np.int64)
    edges = np.linspace(0.0, float(vmax), len(counts) + 1)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), marker_color="#d95f02"))
    fig.update_layout(title="Max activation per atlas image", xaxis_title="activation", yaxis_title="images", **LAYOUT)
    return fig


def profile_figure(profile, recorded_steps: list[int], residual_share: float) -> go.Figure:
    """Line plot of ‖φ_j,t‖ over the recorded sampler steps, titled with the residual share."""
    fig = go.Figure(go.Scatter(x=list(recorded_steps), y=np.asarray(profile, dtype=np.float64), mode="lines+markers",
                               line_color="#1b9e77"))
    fig.update_layout(title=f"‖φ_t‖ over steps · residual share {residual_share:.0%}", xaxis_title="sampler step",
                      yaxis_title="‖φ_t‖", **LAYOUT)
    return fig
