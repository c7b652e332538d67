"""The chat notebook in a real browser: JupyterLab on a loopback port, Debian's Chromium driven by Playwright,
run all cells, type a Chinese question, click Send, wait for the streamed answer, save a screenshot to
data/reports/chat_browser.png. Skipped unless /usr/bin/chromium and the playwright package are installed
(CI: `apt-get install -y chromium fonts-noto-cjk` and `pip install playwright`; no `playwright install`)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium"))
QUESTION = "你好，请介绍一下北京"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed (pip install playwright)"),
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None, reason="jupyterlab not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc, log_path, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyterlab exited with {proc.returncode}: "
                               f"{Path(log_path).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def jupyter_lab(notebook: Path, tmp_path_factory, env: dict, token: str):
    """JupyterLab serving a scratch copy of `notebook` (so that autosave never writes outputs into the repository),
    with private settings/workspace folders and no news or update checks; yields (base url, token, root)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(notebook, root / notebook.name)
    cfg = tmp_path_factory.mktemp("jupyter_config")
    # offline and quiet: no news feed, no update check, no PyPI extension manager
    settings = ("c.LabApp.news_url = None\n"
                "c.LabApp.extension_manager = 'readonly'\n"
                "c.LabApp.expose_app_in_browser = True\n"
                "from jupyterlab.handlers.announcements import NeverCheckForUpdate\n"
                "c.LabApp.check_for_updates_class = NeverCheckForUpdate\n"
                f"c.LabApp.workspaces_dir = {str(cfg / 'workspaces')!r}\n"
                f"c.LabApp.user_settings_dir = {str(cfg / 'settings')!r}\n")
    for name in ("jupyter_lab_config.py", "jupyter_server_config.py"):
        (cfg / name).write_text(settings)
    notify = cfg / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notify.parent.mkdir(parents=True)
    notify.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no "Jupyter news?" toast
    port = free_port()
    env = {**env, "JUPYTER_CONFIG_DIR": str(cfg), "JUPYTER_RUNTIME_DIR": str(cfg / "runtime"),
           "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", "2")}
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--IdentityProvider.token={token}", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/status?token={token}", proc, root / "jupyterlab.log")
        yield f"http://127.0.0.1:{port}", token, root
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, smollm2_path):
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_DATA"}
    with jupyter_lab(REPO / "notebooks" / "05_chat.ipynb", tmp_path_factory, env, "wb-test-token") as served:
        yield served


def test_chat_notebook_in_chromium(lab):
    from playwright import sync_api
    base, token, root = lab
    shot = REPO / "data" / "reports" / "chat_browser.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="zh-CN")
        try:
            page.goto(f"{base}/lab/tree/05_chat.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            # Run > Run All Cells through the application's command registry (menus are layout-dependent), once
            # the notebook's kernel session is up and idle; not awaited (it resolves when all cells have run)
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.kernelDisplayStatus === 'idle'); }", timeout=120_000)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            box = page.locator("textarea[placeholder^='Type a message']")
            box.wait_for(timeout=int(os.environ.get("WB_BROWSER_MS", "300000")))
            # the notebook's own programmatic turn finishes first (status "N tokens, X tok/s")
            label = page.locator(".widget-label").filter(has_text="tok/s").first
            label.wait_for(timeout=300_000)
            before = label.inner_text()
            box.fill(QUESTION)
            page.locator("button.jupyter-button", has_text="Send").click()
            transcript = page.locator(".widget-html-content").filter(has_text=QUESTION)
            transcript.wait_for(timeout=60_000)
            # streamed text appears after the second "Assistant:" while the answer is being generated
            t0, seen, answer = time.time(), "", ""
            while time.time() - t0 < 300:
                seen = transcript.inner_text()
                answer = seen.split(QUESTION, 1)[-1].split("Assistant:", 1)[-1].strip()
                if len(answer) >= 4:
                    break
                time.sleep(0.2)
            assert len(answer) >= 4, f"no streamed answer in the transcript: {seen!r}"
            # finished: a new "N tokens, X tok/s" status and Send enabled again
            page.wait_for_function(
                "before => [...document.querySelectorAll('.widget-label')].some("
                "l => l.textContent.includes('tok/s') && l.textContent !== before)", arg=before, timeout=300_000)
            sync_api.expect(page.locator("button.jupyter-button", has_text="Send")).to_be_enabled(timeout=30_000)
            final = transcript.inner_text().split(QUESTION, 1)[-1]
            assert len(final) >= len(answer), "the transcript only grows"
            page.locator(".widget-html-content").filter(has_text=QUESTION).scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=False)
        except Exception:
            page.screenshot(path=str(shot.with_name("chat_browser_failure.png")), full_page=True)
            raise
        finally:
            browser.close()
    assert shot.exists() and shot.stat().st_size > 10_000
    # the scratch copy may have been autosaved with outputs; the repository's notebook was not touched
    assert '"outputs": []' in (REPO / "notebooks" / "05_chat.ipynb").read_text()
