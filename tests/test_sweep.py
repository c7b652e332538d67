"""Sweeps run the same through the default path, a concurrent.futures executor and a Dask LocalCluster."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from workbench.eval.sweep import perplexity_by_context

COLS = ["model", "n_ctx", "n_chunk", "n_scored", "ppl", "ppl_err"]


@pytest.fixture(scope="module")
def setup(toy_dir, shared_data_dir):
    models = {"mixtral4": str(toy_dir / "tiny-mixtral-f16.gguf"), "mixtral8": str(toy_dir / "tiny-mixtral8-f16.gguf")}
    text = (shared_data_dir / "botchan.txt").read_text(encoding="utf-8")[:6000]
    return models, text


def test_sweep_executors_agree(setup, tmp_path):
    models, text = setup
    plain = perplexity_by_context(models, text, contexts=[32, 64], max_tokens=128, cache_dir=tmp_path / "a")
    assert len(plain) == 4 and (plain.n_chunk == [4, 2, 4, 2]).all() and (plain.ppl > 1).all()
    with ThreadPoolExecutor(2) as ex:
        threaded = perplexity_by_context(models, text, contexts=[32, 64], max_tokens=128, executor=ex,
                                         cache_dir=tmp_path / "b")
    pd.testing.assert_frame_equal(plain[COLS], threaded[COLS])
    # a second call is served from the on-disk cache (same numbers, no recomputation)
    cached = perplexity_by_context(models, text, contexts=[32, 64], max_tokens=128, cache_dir=tmp_path / "a")
    pd.testing.assert_frame_equal(plain[COLS], cached[COLS])
    assert (cached.seconds == plain.seconds).all()


def test_sweep_on_dask_local_cluster(setup, tmp_path):
    distributed = pytest.importorskip("distributed")
    models, text = setup
    plain = perplexity_by_context(models, text, contexts=[32, 64], max_tokens=128, cache_dir=tmp_path / "p")
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_dask = perplexity_by_context(models, text, contexts=[32, 64], max_tokens=128, executor=client,
                                        cache_dir=tmp_path / "d")
    pd.testing.assert_frame_equal(plain[COLS], on_dask[COLS])


def test_ppl_vs_context_draws_error_bars_one_panel_per_text():
    from matplotlib.container import ErrorbarContainer

    from workbench.eval import plots

    rows = [{"model": m, "text": t, "n_ctx": c, "ppl": p * (1 + 0.1 * i), "ppl_err": 0.02 * p * (i + 1)}
            for m, p in (("Q4_1", 20.0), ("Q2_K", 60.0)) for t in ("en", "zh") for i, c in enumerate((128, 256, 512))]
    df = pd.DataFrame(rows)
    fig = plots.ppl_vs_context(df)
    axes = [ax for ax in fig.axes if ax.containers]
    assert len(axes) == 2                                            # one panel per text
    for ax, text in zip(axes, ("en", "zh")):
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert [c.get_label() for c in bars] == ["Q4_1", "Q2_K"] and all(c.has_yerr for c in bars)
        for c, model in zip(bars, ("Q4_1", "Q2_K")):
            want = df[(df.model == model) & (df.text == text)].sort_values("n_ctx")
            segs = c.lines[2][0].get_segments()                         # one vertical segment per point
            np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segs], 2 * want.ppl_err.to_numpy())
            np.testing.assert_allclose([s[0, 0] for s in segs], want.n_ctx.to_numpy())
        assert [t.get_text() for t in ax.get_xticklabels()] == ["128", "256", "512"]
    plots.pyplot().close(fig)
