"""Sweeps run the same through the default path, a concurrent.futures executor and a Dask LocalCluster."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

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
