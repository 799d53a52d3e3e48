"""One source's grid of (gaze, view) rows through LiveGaze's three stages, each run only as often as it must.

``encode`` has run once for the source (its ``SourceFeatures``); ``staged_grid`` then runs
``redirect`` once per gaze, ``batch`` gazes per call, and ``render`` once per row, ``batch`` rows
per call: a call's rows may span several gazes, whose triplanes are gathered, so every render
call but the last of each gaze block is full whatever the number of views. The synthesis actor
(pipelines/render_actor.py) and the grid figure of ``gazegen bench`` (gazegen/benchmark.py) both
run it, so the benchmark times what synthesis does.

What it can gain (``grid_bound``): with per-image costs e (encode), r (redirect) and v (render), a
G gazes x V views grid costs e / (G V) + r / V + v a row, against e + r + v for a full forward per
row, so the render's share bounds the gain. For 3x at 5 x 5 x 3, e + r + v >= 3 (e / 75 + r / 3 + v)
reduces to v <= 0.48 e: the redirect cancels, and the render must cost under half the encoder.
``gazegen bench`` prints the bound from the stage times it measured (against the forward as measured,
f = e + r + v + o, o the forward's own overhead: then 3x needs v <= (0.96 e + o) / 2), and
the bound with a free volume render (v = the super-resolution alone). Measured on 2 CPU cores, one
thread, batch 25 (session 25; ``OMP_NUM_THREADS=1 python benchmarks/model_speed.py --preset
configs/model/tiny.toml --gazes 25 --views 3 --batch 25``): tiny e 0.45, r 0.70, v 0.96, f 2.19 ms,
the super-resolution 0.24 of v; ratio measured 1.69x against a bound of 1.83x, and 3.09x were the
volume render free. 3x needs v <= 0.26 ms, so a volume render of 0.02 ms per image (36x faster than
today's, itself 4x EG3D's): its decoder alone is 1.1 MMAC per image (16^2 rays x 16 samples x 272),
0.02 ms only at the encoders' dense-convolution rate with free plane reads, so no renderer reaches
3x on this preset here (session 24, before the forward was measured whole: 1.71x of 1.71x, 2.96x
free). ``--compile`` gives 1.72x (render 0.94 ms). The demo preset (e 16.8, r 11.2, v
20.1 ms, session 15): 2.0x measured. Counted in MACs (``gazegen bench``'s ``gmacs_per_image``)
tiny's render is 13% of a forward (0.008 of 0.064 GMAC), a bound of 3.3x; it takes half the time
because it runs at ~8 GMAC/s (plane gathers, per-sample passes, thin convolutions) where the
encoders run at ~55. Across the gazes of one view only the coarse samples' positions (so their
texel indices and weights) are shared: the field read there is the gaze's own, and the fine
samples follow its coarse weights. The base preset's MACs (encode 145, redirect 344, render 105
GMAC) bound its 5 x 5 x 3 grid at 2.7x on hardware whose time follows the MACs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from gazegen.models.livegaze import LiveGazeOutput, SourceFeatures

Redirect = Callable[[SourceFeatures, torch.Tensor], torch.Tensor]  # LiveGaze.redirect, or a compiled copy
Render = Callable[..., LiveGazeOutput]  # LiveGaze.render (triplanes, cameras, source=features), or a compiled copy


def grid_bound(encode: float, redirect: float, render: float, gazes: int, views: int, forward: float | None = None) -> float:
    """What a gazes x views grid gains at most over one full forward per row, from the per-image costs of the stages:
    f / (e / (G V) + r / V + v), where a full forward costs f = e + r + v, or ``forward`` as measured (a forward
    timed whole may cost more than its stages timed apart: the ratio measured against it may pass e + r + v's bound)."""
    full = encode + redirect + render if forward is None else forward
    return full / (encode / (gazes * views) + redirect / views + render)


def staged_grid(
    redirect: Redirect, render: Render, features: SourceFeatures, gazes: torch.Tensor, cameras: torch.Tensor,
    gaze_of: np.ndarray, view_of: np.ndarray, batch: int,
) -> Iterator[tuple[np.ndarray, LiveGazeOutput]]:
    """Rows (gaze_of[i], view_of[i]) of gazes (G, 2) and cameras (V, 25) of one source's features (batch 1),
    through a LiveGaze's ``redirect`` and ``render`` (or compiled copies: ``gazegen bench --compile``).

    Yields (row indices, their output), gaze block by gaze block; rows of no gaze are skipped.
    """
    device = gazes.device
    for start in range(0, len(gazes), batch):
        triplanes = redirect(features, gazes[start : start + batch])  # (b, 3, C, P, P), once per gaze
        rows = np.flatnonzero((gaze_of >= start) & (gaze_of < start + batch))
        for chunk in np.array_split(rows, -(-len(rows) // batch)) if len(rows) else []:
            g = gaze_of[chunk] - start
            triplane = triplanes[g[0] : g[0] + 1] if (g == g[0]).all() else triplanes[torch.from_numpy(g).to(device)]
            yield chunk, render(triplane, cameras[torch.from_numpy(view_of[chunk]).to(device)], source=features)
