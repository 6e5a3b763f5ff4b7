"""Every notebook's widget panel in a real browser: JupyterLab, headless Chromium, a moved slider.

For each notebook with a panel (02: ``GuidancePanel``, 03: ``StepPanel``, 04: ``ControlPanel``) the test
starts JupyterLab on a free localhost port with a token, opens a copy of the notebook (its small test
parameters injected by papermill, not executed) in headless Chromium driven by Playwright's Python
API, runs all its cells, waits for the panel to render, moves one slider with the keyboard (arrow
keys on the focused slider handle: 02's ``s_c``, 03's quantization ``step``, 04's ``start step``)
and checks that the kernel redrew the panel: the slider's readout, the metrics line and the image
bytes all change. A screenshot of each panel goes to ``figures/NN_widgets_browser.png``.

It needs Debian's ``chromium`` (``/usr/bin/chromium``; Playwright's own browser download is not
used) and the ``playwright`` package; ``make test-browser`` installs both and runs this test with
``EGC_REQUIRE_BROWSER=1``, which turns a missing browser or package into a failure instead of a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_notebooks import KERNEL_NAME, NOTEBOOK_PARAMETERS

REPO = Path(__file__).resolve().parents[1]
#: notebook -> (the description of the slider moved, how the panel's line shows that slider's value, the
#: arrow key pressed, parameters on top of the small test ones). 03 runs on the shipped rate points (its
#: two-step model of the small parameters codes every symbol as 0 at any step); 04's small files decode
#: one step from c, where the control barely matters, so its start step moves back to 0 (from noise).
PANELS = {
    "02_compression_guidance.ipynb": ("s_c", "s_c={:g} ", "ArrowRight", {}),
    "03_entropy_coding.ipynb": ("step", "step={:g}:", "ArrowRight", {"rate_points": "shipped"}),
    "04_control_module.ipynb": ("start step", "start={:g} ", "ArrowLeft", {}),
}
CHROMIUM = os.environ.get("EGC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Seconds allowed for: the server to answer, the notebook to run top to bottom, one redraw.
SERVER_TIMEOUT, RUN_TIMEOUT, REDRAW_TIMEOUT = 120, 600, 120
#: Keyboard presses on the handle (each one slider step; on 02 a step of the file's guidance mode, 0.01 in "latent").
ARROW_PRESSES = 10


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"chromium not found at {CHROMIUM} (Debian: apt-get install chromium; or `make test-browser`)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright; or `make test-browser`)"
    for module in ("jupyterlab", "jupyterlab_widgets", "ipywidgets", "papermill"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[dev,lab]')"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("EGC_REQUIRE_BROWSER") == "1":
        pytest.fail(f"EGC_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def _wait_for_server(proc: subprocess.Popen, base: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _api(base, token, "/api/status", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def _stop_server(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut the server down through its API (which also shuts down its kernels), then by signal."""
    if proc.poll() is None:
        try:
            _api(base, token, "/api/shutdown", method="POST", timeout=10)
        except OSError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _parameterized_copy(dest: Path, name: str, overrides: dict) -> Path:
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(REPO / "notebooks" / name))  # with the metadata papermill expects
    nb = parameterize_notebook(nb, {**NOTEBOOK_PARAMETERS[name], **overrides}, kernel_name=KERNEL_NAME)
    out = dest / name
    nbformat.write(nb, out)
    return out


# In the page: the state of every code cell of the open notebook (from the model JupyterLab keeps).
CELL_STATES_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.content.widgets || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {
    kernel: kernel ? kernel.status : null,
    cells: panel.content.widgets.filter(c => c.model.type === 'code').map(c => ({
      count: c.model.executionCount,
      prompt: c.promptNode ? c.promptNode.textContent : '',
      errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                .map(o => o.ename + ': ' + o.evalue),
    })),
  };
}"""

KERNEL_IDLE_JS = "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'"

# In the page: the bytes of the panel's image, read back from its blob URL (base64).
IMAGE_BYTES_JS = """async (img) => {
  const buf = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let s = '';
  for (let i = 0; i < buf.length; i++) s += String.fromCharCode(buf[i]);
  return btoa(s);
}"""


def _wait_notebook_done(page) -> dict:
    """Wait until every code cell has run (an execution count, no '*' prompt) and the kernel is idle."""
    deadline = time.monotonic() + RUN_TIMEOUT
    state = None
    while time.monotonic() < deadline:
        state = page.evaluate(CELL_STATES_JS)
        if state and state["cells"]:
            errors = [e for c in state["cells"] for e in c["errors"]]
            assert not errors, f"a cell of the notebook raised: {errors}"
            done = all(c["count"] is not None and "*" not in c["prompt"] for c in state["cells"])
            if done and state["kernel"] == "idle":
                return state
        time.sleep(1)
    pytest.fail(f"the notebook did not finish within {RUN_TIMEOUT} s; last state: {json.dumps(state)[:2000]}")


def _metrics(label: str) -> str:
    m = re.search(r"PSNR .*", label)
    assert m, f"the panel's metrics line has no PSNR: {label!r}"
    return m.group(0)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(PANELS))
def test_panel_in_browser(tmp_path: Path, notebook: str) -> None:
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    data = os.environ.get("EGC_DATA")
    if not (data and (Path(data) / "kodak" / "kodim01.png").exists()):
        pytest.skip("Kodak not found: set EGC_DATA to a folder holding kodak/ (the tests never download)")
    from playwright.sync_api import expect, sync_playwright

    t_start = time.monotonic()
    root = tmp_path / "lab"
    root.mkdir()
    description, shows, key, overrides = PANELS[notebook]
    nb_path = _parameterized_copy(root, notebook, overrides)
    screenshot = REPO / "figures" / f"{notebook[:2]}_widgets_browser.png"

    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "EGC_PROGRESS": "0", "JUPYTER_PREFER_ENV_PATH": "1",
        # the kernel imports this checkout's egc_lite; user-level Jupyter state stays in the temp dir
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    })
    if env.get("MPLBACKEND", "").lower() == "agg":
        del env["MPLBACKEND"]
    # no "Jupyter news?" notification over the screenshot
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:  # CI containers often run as root
        cmd.append("--allow-root")
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        _wait_for_server(proc, base, token, log)
        t_server = time.monotonic()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(f"{base}/lab/tree/{nb_path.name}?reset&token={token}", wait_until="domcontentloaded")
                page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                       " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=120_000)
                page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.isReady", timeout=120_000)
                t_kernel = time.monotonic()
                page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
                _wait_notebook_done(page)
                t_run = time.monotonic()

                # The panel: a VBox holding the two sliders, the metrics label and the image.
                slider = page.locator(".widget-slider").filter(
                    has=page.locator(".widget-label", has_text=re.compile(f"^{re.escape(description)}$")))
                expect(slider).to_have_count(1, timeout=30_000)
                panel = page.locator(".widget-vbox").filter(has=slider)
                label = panel.locator(".widget-label").filter(has_text="PSNR")
                image = panel.locator("img")
                expect(label).to_have_count(1)
                expect(image).to_have_count(1)
                panel.scroll_into_view_if_needed()
                readout = slider.locator(".widget-readout")
                readout_before, label_before = readout.text_content(), label.text_content()
                sc_before = float(readout_before)
                image_before = image.evaluate(IMAGE_BYTES_JS)
                assert image.evaluate("img => img.complete && img.naturalWidth > 0"), "the browser did not decode the panel's image"
                assert shows.format(sc_before) in label_before, f"slider at {sc_before}, panel shows {label_before!r}"
                assert image_before, "the panel's image is empty"

                # Move the slider with the keyboard: focus the handle, press the arrow key.
                handle = slider.locator(".noUi-handle")
                handle.focus()
                for _ in range(ARROW_PRESSES):
                    handle.press(key)
                expect(readout).not_to_have_text(readout_before, timeout=10_000)
                sc_after = float(readout.text_content())
                moved = sc_after > sc_before if key == "ArrowRight" else sc_after < sc_before
                assert moved, f"{description} did not move with {key}: {sc_before} -> {sc_after}"
                # The kernel redraws once per value it receives; wait for the label of the last one.
                expect(label).to_contain_text(shows.format(sc_after), timeout=REDRAW_TIMEOUT * 1000)
                page.wait_for_function(KERNEL_IDLE_JS, timeout=REDRAW_TIMEOUT * 1000)
                label_after = label.text_content()
                image_after = image.evaluate(IMAGE_BYTES_JS)
                expect(image).to_have_js_property("complete", True)
                assert image.evaluate("img => img.naturalWidth > 0"), "the browser did not decode the redrawn image"
                t_moved = time.monotonic()

                screenshot.parent.mkdir(exist_ok=True)
                # the panel's code cell at the top of the view, its output (the panel) below it
                cell = page.locator(".jp-CodeCell").filter(has=panel)
                cell.evaluate("e => e.scrollIntoView({block: 'start'})")
                page.wait_for_timeout(500)  # let the scroll settle before the picture
                page.screenshot(path=str(screenshot))
            finally:
                browser.close()
    finally:
        _stop_server(proc, base, token)

    print(f"\nserver {t_server - t_start:.1f} s, page and kernel {t_kernel - t_server:.1f} s, notebook {t_run - t_kernel:.1f} s, "
          f"slider {t_moved - t_run:.1f} s; "
          f"{description} {sc_before:g} -> {sc_after:g}\n  before: {label_before}\n  after:  {label_after}")
    assert _metrics(label_after) != _metrics(label_before), (
        f"moving {description} from {sc_before:g} to {sc_after:g} left the metrics unchanged: {label_before!r} / {label_after!r}")
    assert image_after != image_before, f"moving {description} from {sc_before:g} to {sc_after:g} left the panel's image unchanged"
