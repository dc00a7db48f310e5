"""Drive JupyterLab 4 in headless Chromium (Playwright), as a student meets the notebooks.

* :func:`find_chromium`: a Chromium executable on this machine (Debian's ``chromium`` package);
  Playwright's own browser download cannot work without the internet, so it drives this one.
* :class:`JupyterLab`: a JupyterLab server on 127.0.0.1 with a token, on a free port, serving a
  temporary copy of the notebooks (a browser session autosaves: the repository's notebooks stay
  untouched), its log captured.
* :func:`open_notebook`, :func:`run_all_cells`, :func:`visible_errors`, :func:`log_console_errors`,
  :func:`slider_by_label`, :func:`press_on_slider`, :func:`is_blank`: what the tests do on a page.

Selectors are JupyterLab 4's and ipywidgets 8's (``.jp-CodeCell``, ``.jp-InputPrompt``,
``.widget-slider``, ``.noUi-handle``, ``.widget-readout``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: the browser binary behind Debian's ``/usr/bin/chromium`` shell wrapper
DEBIAN_CHROMIUM = "/usr/lib/chromium/chromium"

#: JupyterLab user settings for a test session: every cell in the DOM (JupyterLab 4 otherwise renders
#: only the cells near the viewport), no news or update pop-ups over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

#: what a cell's output area shows for an exception (JupyterLab renders error outputs with this MIME type)
ERROR_SELECTOR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b", re.MULTILINE)


def find_chromium() -> str | None:
    """Path of a Chromium executable: ``$SAFERLHFV_CHROMIUM``, Debian's binary, or one on PATH; None if none."""
    explicit = os.environ.get("SAFERLHFV_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    if Path(DEBIAN_CHROMIUM).exists():
        return DEBIAN_CHROMIUM
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A JupyterLab server for one test session (context manager).

    Args:
        root: folder served (the notebooks are copied here by the caller).
        home: folder for the server's settings, runtime files and log.
        timeout_s: how long to wait for the server to answer, in seconds.
    """

    def __init__(self, root: Path, home: Path, *, timeout_s: float = 120.0) -> None:
        self.root, self.home, self.timeout_s = Path(root), Path(home), timeout_s
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = self.home / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str) -> str:
        """The URL that opens ``notebook`` (a path under ``root``) in JupyterLab, token included."""
        return f"{self.base_url}/lab/tree/{notebook}?reset&token={self.token}"

    def log(self) -> str:
        """Everything the server and its kernels wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> JupyterLab:
        settings = self.home / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            plugin, file = name.rsplit("/", 1)
            (settings / plugin).mkdir(parents=True, exist_ok=True)
            (settings / plugin / file).write_text(json.dumps(values))
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # the kernel's own inline backend: figures appear as pictures
        env.update(
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
            JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
        )
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--LabApp.news_url=", "--ServerApp.allow_root=True",
        ]  # fmt: skip
        self._log_file = open(self.log_path, "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"JupyterLab did not answer within {self.timeout_s:.0f} s:\n{self.log()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def open_notebook(page, lab: JupyterLab, notebook: str, *, timeout_s: float = 120.0) -> None:
    """Open ``notebook`` and wait until its kernel is idle."""
    page.goto(lab.url(notebook), wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout_s * 1000)
    page.wait_for_function(
        """() => {
            const d = document.querySelector('.jp-Dialog');
            if (d && /Select Kernel/.test(d.textContent)) {
                d.querySelector('.jp-mod-accept').click();  // a notebook without kernelspec: the default kernel
            }
            const k = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-KernelName');
            return k && !/No Kernel/.test(k.textContent);
        }""",
        timeout=timeout_s * 1000,
        polling=250,
    )
    wait_kernel_idle(page, timeout_s=timeout_s)


def wait_kernel_idle(page, *, timeout_s: float) -> None:
    """Wait until the notebook's kernel status reads idle (the toolbar's kernel status indicator)."""
    page.wait_for_function(
        """() => {
            const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
            return s && s.getAttribute('data-status') === 'idle';
        }""",
        timeout=timeout_s * 1000,
    )


def _menu(page, menu: str, item: str) -> None:
    """Click ``item`` in the menu bar's ``menu``."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(menu)}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def run_all_cells(page, *, timeout_s: float) -> float:
    """Run > Run All Cells from the menu bar and wait until every code cell has run; returns seconds taken.

    A code cell has run when its prompt shows an execution count (``[12]:``); ``[*]:`` is running,
    ``[ ]:`` queued or never run.
    """
    start = time.monotonic()
    _menu(page, "Run", "Run All Cells")
    page.wait_for_function(
        """() => {
            const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
            const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""",
        timeout=timeout_s * 1000,
        polling=500,
    )
    return time.monotonic() - start


def visible_errors(page) -> list[str]:
    """Error outputs the page shows (exceptions in cells, or in an ipywidgets ``Output`` area), as text."""
    texts = page.locator(ERROR_SELECTOR).all_inner_texts()
    return [t for t in texts if TRACEBACK.search(t)]


def slider_by_label(scope, label: str):
    """The ipywidgets slider whose description reads ``label``, inside ``scope`` (a page or a locator)."""
    page = getattr(scope, "page", scope)  # the inner locator of ``filter(has=...)`` is built from the page
    label_ = page.locator(".widget-label", has_text=re.compile(f"^{re.escape(label)}$"))
    return scope.locator(".widget-slider").filter(has=label_).first


def press_on_slider(slider, key: str, times: int = 1) -> None:
    """Focus the slider's handle and press ``key`` (e.g. ``ArrowRight``, ``PageUp``, ``End``) ``times`` times."""
    handle = slider.locator(".noUi-handle")
    handle.focus()
    for _ in range(times):
        handle.press(key)


def is_blank(png: Path, *, min_std: float = 8.0) -> bool:
    """True if a screenshot is (nearly) one colour: the grey levels' standard deviation below ``min_std``."""
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    return float(grey.std()) < min_std


def log_console_errors(page) -> list[str]:
    """Tracebacks in JupyterLab's log console for the current notebook (opened if closed), as text.

    Output that belongs to no cell lands there, among it the exception of a widget callback
    (an ``observe`` handler that raises): the student sees only a counter in the status bar.
    """
    if page.locator(".jp-LogConsolePanel").count() == 0:
        _menu(page, "View", "Show Log Console")
        page.wait_for_selector(".jp-LogConsolePanel")
    texts = page.locator(".jp-LogConsolePanel .jp-OutputArea-output").all_inner_texts()
    return [t for t in texts if TRACEBACK.search(t)]
