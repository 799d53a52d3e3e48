"""One source's grid of (gaze, view) rows through LiveGaze's three stages, each run only as often as it must.

``encode`` has run once for the source (its ``SourceFeatures``); ``staged_grid`` then runs
``redirect`` once per gaze, ``batch`` gazes per call, and ``render`` once per row, ``batch`` rows
per call: a call's rows may span several gazes, whose triplanes are gathered, so every render
call but the last of each gaze block is full whatever the number of views. The synthesis actor
(pipelines/render_actor.py) and the grid figure of ``gazegen bench`` (gazegen/benchmark.py) both
run it, so the benchmark times what synthesis does.

What it can gain: with per-image costs e (encode), r (redirect) and v (render), a G gazes x V
views grid costs e / (G V) + r / V + v a row, against e + r + v for a full forward per row, so the
render's share bounds the gain. Measured on 2 CPU cores at batch 25 (session 15;
``python benchmarks/model_speed.py --preset configs/model/tiny.toml --gazes 25 --views 3 --batch 25``):
tiny e 0.30, r 0.41, v 0.53 ms, so 1.85x at most for 5 x 5 x 3 (measured 1.76x), and 2.3x even
with a free redirect; 3x would need v <= 0.15 ms. The demo preset (e 16.8, r 11.2, v 20.1 ms):
2.0x measured. Only a faster render (both paths share it) moves the bound. Counted in MACs
(``gazegen bench``'s ``gmacs_per_image``) tiny's render is 13% of a forward (0.008 of 0.064
GMAC), a bound of 3.3x; it takes 43% of the time because its plane gathers and per-sample passes
run at ~16 GMAC/s where the encoders' convolutions run at ~80. The base preset's MACs (encode 145,
redirect 344, render 105 GMAC) bound its 5 x 5 x 3 grid at 2.7x whatever the hardware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from gazegen.models.livegaze import LiveGazeOutput, SourceFeatures

Redirect = Callable[[SourceFeatures, torch.Tensor], torch.Tensor]  # LiveGaze.redirect, or a compiled copy
Render = Callable[..., LiveGazeOutput]  # LiveGaze.render (triplanes, cameras, source=features), or a compiled copy


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
