"""The arena notebook in a real browser (as tests/test_browser.py does for the chat): JupyterLab on a loopback
port over a scratch data folder, Debian's Chromium driven by Playwright; run all cells (two scripted rounds and
the summary), then two rounds by hand: type a prompt, Enter, wait for both streamed answers, click a vote; the
votes file holds them with the right files, the summary table renders and counts them. Screenshot:
data/reports/arena_browser.png. Skipped unless /usr/bin/chromium, playwright and jupyterlab are installed."""
from __future__ import annotations

import json
import os
import re

import pytest

from test_browser import CHROMIUM, LAUNCH_ARGS, REPO, jupyter_lab, pytestmark  # noqa: F401 (the same skips)
BROWSER_ROUNDS = [("Name a famous painter.", "left"), ("说一种水果。", "right")]


@pytest.fixture(scope="module")
def arena_data(tmp_path_factory, smollm2_path):
    """A scratch data folder: the model, the texts and the arena's second file (made once in the repository's
    data/models/quant cache, as the notebook would) linked in; the votes land here, not in data/arena."""
    from workbench.assets import ensure_texts
    from workbench.eval.arena import arena_files

    data = tmp_path_factory.mktemp("arena_data")
    (data / "models" / "quant").mkdir(parents=True)
    (data / "models" / smollm2_path.name).symlink_to(smollm2_path.resolve())
    (data / "texts").mkdir()
    for path in ensure_texts().values():
        (data / "texts" / path.name).symlink_to(path.resolve())
    _, second = arena_files(smollm2_path, ["Q4_1", "Q4_0"])
    for f in (second, second.with_suffix(".tensors.csv")):
        (data / "models" / "quant" / f.name).symlink_to(f.resolve())
    return data


@pytest.fixture(scope="module")
def lab(tmp_path_factory, arena_data):
    env = {**os.environ, "WORKBENCH_DATA": str(arena_data), "WORKBENCH_FULL": "0"}
    with jupyter_lab(REPO / "notebooks" / "07_arena.ipynb", tmp_path_factory, env, "wb-arena-token") as served:
        yield served[:2]


SUMMARY = ".jp-OutputArea-output table"


def test_arena_notebook_in_chromium(lab, arena_data):
    from playwright import sync_api
    expect = sync_api.expect
    base, token = lab
    votes = arena_data / "arena" / "demo_votes.jsonl"
    shot = REPO / "data" / "reports" / "arena_browser.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100}, locale="zh-CN")
        try:
            page.goto(f"{base}/lab/tree/07_arena.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.kernelDisplayStatus === 'idle'); }", timeout=120_000)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            # run all: the scripted rounds, then the summary table (its last row is the position bias)
            table = page.locator(SUMMARY).filter(has_text="position: left")
            table.wait_for(timeout=600_000)
            assert re.search(r"position: left\s+2\s", table.inner_text()), table.inner_text()
            box = page.locator(".wb-arena-prompt input")
            for prompt, side in BROWSER_ROUNDS:
                box.fill(prompt)
                box.press("Enter")
                panels = [page.locator(f".wb-arena-answer-{s}") for s in ("left", "right")]
                for panel in panels:
                    expect(panel).to_contain_text(prompt, timeout=60_000)
                vote = page.locator(f"button.wb-arena-vote-{side}")
                expect(vote).to_be_enabled(timeout=300_000)            # both answers are done
                for panel in panels:                                  # and both streamed some text
                    assert len(panel.inner_text().split(prompt, 1)[-1].strip()) >= 1, panel.inner_text()
                vote.click()
                expect(page.locator(".wb-arena-reveal")).to_contain_text("Answer 1 was", timeout=30_000)
                expect(vote).to_be_disabled(timeout=30_000)
            page.locator(".wb-arena-reveal").scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=False)
            # re-run the summary cell: it now counts the two votes made by hand
            page.evaluate("() => { const nb = window.jupyterapp.shell.currentWidget.content;"
                          " nb.activeCellIndex = nb.widgets.length - 1;"
                          " window.jupyterapp.commands.execute('notebook:run-cell'); }")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-OutputArea-output table')].some("
                "t => /position: left\\s+4\\s/.test(t.innerText))", timeout=600_000)
        except Exception:
            page.screenshot(path=str(shot.with_name("arena_browser_failure.png")), full_page=True)
            raise
        finally:
            browser.close()
    recs = [json.loads(x) for x in votes.read_text(encoding="utf-8").splitlines() if x.strip()]
    assert [r["voter"] for r in recs] == ["script:longer"] * 2 + ["human"] * 2
    for r, (prompt, side) in zip(recs[2:], BROWSER_ROUNDS):
        assert r["prompt"] == prompt and r["vote_side"] == side and r["answer_a"] and r["answer_b"]
        assert r["vote"] == (r["left"] if side == "left" else ("B" if r["left"] == "A" else "A"))
        assert {r["file_a"], r["file_b"]} == {"SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.Q4_0.gguf"}
    assert shot.exists() and shot.stat().st_size > 10_000
    assert '"outputs": []' in (REPO / "notebooks" / "07_arena.ipynb").read_text()
