"""Headless Debian Chromium driven over the Chrome DevTools Protocol (CDP), for tests of the real web page.

Only websocket-client is needed (already a dev dependency); no Playwright browser download. ``ensure_chromium()``
installs Debian's ``chromium`` with apt-get when it is absent (as root) and fails with a clear message otherwise.

    with Browser() as browser:
        page = browser.new_page(width=1600, height=1000)
        page.goto(server.url)
        comfy = ComfyPage(page)
        comfy.wait_ready()
        comfy.drop_workflow(workflow_dict, "tdm_restore.json")
        page.screenshot("out.png")

Everything the page logs at error level and every uncaught exception is kept in ``page.errors``
(warnings in ``page.warnings``), so a test can assert the console stayed clean.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Flags known to work as root on these machines; the background-networking ones keep Chromium from
# dialling out on a closed network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                  "--disable-dev-shm-usage", "--no-default-browser-check", "--password-store=basic")


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    env = os.environ.get("TR_CHROMIUM")
    if env:
        return env if os.path.exists(env) else None
    for path in CHROMIUM_CANDIDATES:
        if os.path.exists(path):
            return path
    return shutil.which("chromium")


def ensure_chromium() -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` package with apt-get when missing."""
    env = os.environ.get("TR_CHROMIUM")
    if env and not os.path.exists(env):
        raise BrowserError(f"TR_CHROMIUM={env} does not exist")
    path = find_chromium()
    if path:
        return path
    if not shutil.which("apt-get"):
        raise BrowserError("Chromium is missing and apt-get is not available: install the Debian/Ubuntu "
                           "package 'chromium' (or set TR_CHROMIUM to a Chromium binary)")
    if os.geteuid() != 0:
        raise BrowserError("Chromium is missing and this process is not root: run "
                           "`sudo apt-get update && sudo apt-get install -y chromium` (or set TR_CHROMIUM)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
        if res.returncode != 0:
            raise BrowserError(f"`{' '.join(cmd)}` failed ({res.returncode}) while installing Chromium:\n{res.stdout[-3000:]}")
    path = find_chromium()
    if not path:
        raise BrowserError("apt-get installed 'chromium' but no chromium binary was found")
    return path


class CDPConnection:
    """One websocket to the browser; commands carry an optional sessionId (flattened target sessions)."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client

        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True, enable_multithread=True)
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.Queue] = {}
        self._listeners: dict[str | None, list] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import websocket

        while not self._closed:
            try:
                raw = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # socket closed: wake every waiter
                break
            if not raw:
                continue
            msg = json.loads(raw)
            if "id" in msg:
                q = self._pending.pop(msg["id"], None)
                if q is not None:
                    q.put(msg)
            else:
                for cb in list(self._listeners.get(msg.get("sessionId"), [])):
                    try:
                        cb(msg["method"], msg.get("params", {}))
                    except Exception:  # a listener bug must not kill the reader
                        pass
        self._closed = True
        for q in list(self._pending.values()):
            q.put({"error": {"message": "CDP connection closed"}})

    def listen(self, session_id: str | None, callback) -> None:
        self._listeners.setdefault(session_id, []).append(callback)

    def send(self, method: str, params: dict | None = None, session_id: str | None = None, timeout: float = 60):
        if self._closed:
            raise BrowserError(f"CDP connection closed (sending {method})")
        mid = next(self._ids)
        q: queue.Queue = queue.Queue()
        self._pending[mid] = q
        msg = {"id": mid, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        with self._lock:
            self._ws.send(json.dumps(msg))
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            self._pending.pop(mid, None)
            raise BrowserError(f"CDP {method} got no answer in {timeout}s") from None
        if "error" in reply:
            raise BrowserError(f"CDP {method} failed: {reply['error'].get('message')} {reply['error'].get('data', '')}")
        return reply.get("result", {})

    def close(self) -> None:
        self._closed = True
        try:
            self._ws.close()
        except Exception:
            pass


class Page:
    """One tab: navigation, JavaScript evaluation, mouse clicks, screenshots, console capture."""

    def __init__(self, conn: CDPConnection, target_id: str, session_id: str):
        self.conn, self.target_id, self.session_id = conn, target_id, session_id
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.console: list[tuple[str, str]] = []
        self._load_event = threading.Event()
        conn.listen(session_id, self._on_event)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: dict | None = None, timeout: float = 60):
        return self.conn.send(method, params, self.session_id, timeout)

    # -- events ------------------------------------------------------------------------------------
    @staticmethod
    def _remote_text(obj: dict) -> str:
        if "value" in obj:
            v = obj["value"]
            return v if isinstance(v, str) else json.dumps(v)
        if obj.get("unserializableValue"):
            return obj["unserializableValue"]
        return obj.get("description") or obj.get("className") or obj.get("type", "?")

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(self._remote_text(a) for a in params.get("args", []))
            level = params.get("type", "log")
            self.console.append((level, text))
            if level in ("error", "assert"):
                self.errors.append(f"console.{level}: {text}")
            elif level == "warning":
                self.warnings.append(text)
        elif method == "Runtime.exceptionThrown":
            det = params.get("exceptionDetails", {})
            exc = det.get("exception", {})
            desc = exc.get("description") or det.get("text", "")
            where = f"{det.get('url', '')}:{det.get('lineNumber', '')}"
            self.errors.append(f"uncaught exception: {desc} at {where}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            # Network-level failures (a 404 on a resource, a refused connection) land here, not in the console API.
            if entry.get("level") == "error":
                self.errors.append(f"log[{entry.get('source')}]: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Page.loadEventFired":
            self._load_event.set()

    def clear_messages(self) -> None:
        self.errors.clear()
        self.warnings.clear()
        self.console.clear()

    # -- navigation and script ---------------------------------------------------------------------
    def goto(self, url: str, timeout: float = 60) -> None:
        self._load_event.clear()
        res = self.send("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {res['errorText']}")
        if not self._load_event.wait(timeout):
            raise BrowserError(f"{url} did not fire the load event in {timeout}s")

    def evaluate(self, expression: str, await_promise: bool = True, timeout: float = 60):
        """Value of a JavaScript expression (JSON-serialisable); a thrown error becomes BrowserError."""
        res = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": await_promise,
                                             "returnByValue": True, "userGesture": True}, timeout)
        if res.get("exceptionDetails"):
            det = res["exceptionDetails"]
            desc = det.get("exception", {}).get("description") or det.get("text")
            raise BrowserError(f"script failed: {desc}\n--- script ---\n{expression[:2000]}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.25, what: str = ""):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.time() + timeout
        last_err = None
        while time.time() < deadline:
            try:
                value = self.evaluate(expression)
                if value:
                    return value
            except BrowserError as e:
                last_err = e
            time.sleep(interval)
        raise BrowserError(f"timed out after {timeout}s waiting for {what or expression}"
                           + (f" (last error: {last_err})" if last_err else ""))

    # -- input ---------------------------------------------------------------------------------------
    def click(self, x: float, y: float) -> None:
        """A real left click (mouse moved, pressed, released) at viewport coordinates."""
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def click_selector(self, selector: str) -> dict:
        """Click the centre of the first visible element matching a CSS selector; returns its box."""
        box = self.evaluate(f"""(() => {{
            const el = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => {{ const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; }});
            if (!el) return null;
            const r = el.getBoundingClientRect();
            return {{x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width, h: r.height}};
        }})()""")
        if not box:
            raise BrowserError(f"no visible element matches {selector!r}")
        self.click(box["x"], box["y"])
        return box

    # -- output --------------------------------------------------------------------------------------
    def screenshot(self, path: str, width: int | None = None, clip: dict | None = None) -> str:
        """PNG of the viewport, or of ``clip`` ({x, y, width, height} in CSS pixels); with ``width`` the image
        is scaled to that many pixels wide."""
        params: dict = {"format": "png"}
        if width or clip:
            if clip is None:
                metrics = self.send("Page.getLayoutMetrics")
                vp = metrics.get("cssLayoutViewport") or metrics["layoutViewport"]
                clip = {"x": 0, "y": 0, "width": vp["clientWidth"], "height": vp["clientHeight"]}
            scale = width / clip["width"] if width else 1
            params["clip"] = {"x": clip["x"], "y": clip["y"], "width": clip["width"], "height": clip["height"], "scale": scale}
        data = self.send("Page.captureScreenshot", params)["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.conn.send("Target.closeTarget", {"targetId": self.target_id}, timeout=10)
        except BrowserError:
            pass


class Browser:
    """A headless Chromium process with a fresh profile, reached over CDP on a loopback port."""

    def __init__(self, executable: str | None = None, extra_flags: tuple[str, ...] = ()):
        self.executable = executable or ensure_chromium()
        self.extra_flags = extra_flags
        self.proc: subprocess.Popen | None = None
        self.conn: CDPConnection | None = None
        self.profile: str | None = None

    def start(self, timeout: float = 60) -> "Browser":
        self.profile = tempfile.mkdtemp(prefix="tr-chromium-")
        self._log_path = os.path.join(self.profile, "chromium.log")
        cmd = [self.executable, *CHROMIUM_FLAGS, *self.extra_flags, f"--user-data-dir={self.profile}",
               "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"]
        self._log = open(self._log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"Chromium exited with {self.proc.returncode}:\n{self.log_tail()}")
            if os.path.exists(port_file):
                lines = open(port_file).read().split("\n")
                if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
                    self.conn = CDPConnection(f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}")
                    return self
            time.sleep(0.1)
        self.stop()
        raise BrowserError(f"Chromium did not open its DevTools port in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self._log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except (OSError, AttributeError):
            return ""

    def new_page(self, width: int = 1600, height: int = 1000) -> Page:
        target = self.conn.send("Target.createTarget", {"url": "about:blank"})
        tid = target["targetId"]
        sid = self.conn.send("Target.attachToTarget", {"targetId": tid, "flatten": True})["sessionId"]
        page = Page(self.conn, tid, sid)
        page.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page

    def stop(self) -> None:
        if self.conn:
            try:
                self.conn.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            self.conn.close()
            self.conn = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# A user who has used the page before: no first-start template browser popping up over the graph.
# Comfy.Workflow.Persist off: a page opened later in the same browser session must not restore the workflows an
# earlier page had open (frontend 1.49 does; a file dropped again under the same name then opens as "name (2)").
RETURNING_USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.Persist": False}


def store_settings(server_url: str, settings: dict) -> None:
    """Write web-page settings into the server's user settings (POST /settings), before a page opens."""
    import urllib.request

    req = urllib.request.Request(server_url.rstrip("/") + "/settings", data=json.dumps(settings).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


class ComfyPage:
    """What a user does on ComfyUI's web page (frontend 1.32.x): wait for it, drop a workflow, press Run."""

    def __init__(self, page: Page):
        self.page = page

    def wait_ready(self, timeout: float = 90) -> int:
        """Wait until the app, the canvas and the node definitions are up; returns the registered type count."""
        return self.page.wait_for(
            "window.app && window.app.graph && window.app.canvas && window.LiteGraph"
            " && document.querySelector('canvas') && Object.keys(LiteGraph.registered_node_types).length",
            timeout, what="the ComfyUI page to load its node definitions")

    def close_dialogs(self) -> list[str]:
        """Close every open dialog (e.g. the template browser shown on first start); returns their texts."""
        return self.page.evaluate("""(() => {
            const texts = [];
            for (const d of document.querySelectorAll('.p-dialog')) {
                texts.push(d.innerText.slice(0, 300));
                const close = d.querySelector('.p-dialog-close-button, button[aria-label="Close"]');
                if (close) close.click();
            }
            return texts;
        })()""") or []

    def dialogs(self) -> list[str]:
        return self.page.evaluate("[...document.querySelectorAll('.p-dialog')].map(d => d.innerText)") or []

    def toasts(self) -> list[dict]:
        return self.page.evaluate("""[...document.querySelectorAll('.p-toast-message')].map(t => ({
            severity: [...t.classList].find(c => c.startsWith('p-toast-message-') && c !== 'p-toast-message-content') || '',
            text: t.innerText}))""") or []

    def registered_types(self) -> set[str]:
        return set(self.page.evaluate("Object.keys(LiteGraph.registered_node_types)") or [])

    def drop_workflow(self, workflow: dict, filename: str, timeout: float = 60) -> dict:
        """Drop the workflow as a .json file onto the canvas, the way a user drags a file from disk.

        The DragEvent carries a real ``File`` in a ``DataTransfer``; the frontend's document-level drop handler
        reads it with ``handleFile`` (the same code a real drag runs). Waits until the graph holds the workflow's
        nodes; returns {nodes: count, types: [...]} as loaded."""
        text = json.dumps(workflow)
        want = len(workflow.get("nodes", []))
        self.page.evaluate(f"""(() => {{
            window.__trDropDone = false;
            const file = new File([{json.dumps(text)}], {json.dumps(filename)}, {{type: 'application/json'}});
            const dt = new DataTransfer();
            dt.items.add(file);
            const canvas = window.app.canvasEl || document.querySelector('canvas');
            const r = canvas.getBoundingClientRect();
            const opts = {{dataTransfer: dt, bubbles: true, cancelable: true, composed: true,
                          clientX: r.x + r.width / 2, clientY: r.y + r.height / 2}};
            canvas.dispatchEvent(new DragEvent('dragenter', opts));
            canvas.dispatchEvent(new DragEvent('dragover', opts));
            canvas.dispatchEvent(new DragEvent('drop', opts));
            return true;
        }})()""")
        wf_title = os.path.splitext(filename)[0]
        self.page.wait_for(
            f"window.app.graph.nodes.length === {want}"
            f" && (window.app.extensionManager?.workflow?.activeWorkflow?.filename ?? {json.dumps(wf_title)}) === {json.dumps(wf_title)}",
            timeout, what=f"the dropped workflow {filename} ({want} nodes) to load")
        return self.page.evaluate("({nodes: app.graph.nodes.length, types: app.graph.nodes.map(n => n.type),"
                                  " groups: (app.graph.groups || app.graph._groups || []).length})")

    def set_widget(self, node_title: str, widget: str, value) -> None:
        """Set a widget value the way its own callback would (e.g. a LoadVideo file combo)."""
        ok = self.page.evaluate(f"""(() => {{
            const n = app.graph.nodes.find(n => n.title === {json.dumps(node_title)});
            if (!n) return 'no node titled ' + {json.dumps(node_title)};
            const w = (n.widgets || []).find(w => w.name === {json.dumps(widget)});
            if (!w) return 'node has no widget ' + {json.dumps(widget)};
            w.value = {json.dumps(value)};
            w.callback?.(w.value, app.canvas, n);
            app.graph.setDirtyCanvas(true, true);
            return true;
        }})()""")
        if ok is not True:
            raise BrowserError(f"set_widget({node_title!r}, {widget!r}): {ok}")

    # Settings that hide the canvas chrome (minimap, canvas menu, render stats) for pictures of the graph.
    # They are stored in the server's user settings: use them on a server of your own.
    CLEAN_VIEW_SETTINGS = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasMenu": False,
                           "Comfy.Graph.CanvasInfo": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0}

    def clean_view(self, settings: dict | None = None) -> None:
        """Focus mode (no side bar, menus or banners) and the chrome-hiding settings, for thumbnails."""
        self.page.evaluate(f"""(async () => {{
            const s = app.extensionManager.setting;
            for (const [k, v] of Object.entries({json.dumps(settings or self.CLEAN_VIEW_SETTINGS)})) await s.set(k, v);
            if (!app.extensionManager.workspace?.focusMode) await app.extensionManager.command.execute('Workspace.ToggleFocusMode');
            const style = document.createElement('style');  // the focus-mode menu button
            style.textContent = '.comfy-menu-hamburger {{ display: none !important; }}';
            document.head.appendChild(style);
            return true;
        }})()""")
        time.sleep(0.5)

    def graph_bounds(self) -> list[float]:
        """[x, y, w, h] in canvas units of everything drawn: nodes with their title bars, and groups."""
        return self.page.evaluate("""(() => {
            const b = [Infinity, Infinity, -Infinity, -Infinity];
            const add = (x, y, w, h) => { b[0] = Math.min(b[0], x); b[1] = Math.min(b[1], y);
                                          b[2] = Math.max(b[2], x + w); b[3] = Math.max(b[3], y + h); };
            const th = LiteGraph.NODE_TITLE_HEIGHT;
            for (const n of app.graph.nodes) add(n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th);
            for (const g of (app.graph.groups || app.graph._groups || [])) { const r = g._bounding || g.bounding; add(r[0], r[1], r[2], r[3]); }
            return [b[0], b[1], b[2] - b[0], b[3] - b[1]];
        })()""")

    def fit_view(self, pad: float = 30) -> dict:
        """Zoom and pan the canvas so the whole graph (nodes, groups, the note) fills it, centred.

        Returns the graph's rectangle on screen, {x, y, width, height} in CSS pixels."""
        rect = self.page.evaluate(f"""(() => {{
            const [x, y, w, h] = {json.dumps(self.graph_bounds())};
            const el = app.canvasEl || app.canvas.canvas;
            const r = el.getBoundingClientRect();
            const pad = {pad};
            const scale = Math.min((r.width - 2 * pad) / w, (r.height - 2 * pad) / h);
            const ds = app.canvas.ds;
            ds.scale = scale;
            ds.offset[0] = (r.width / scale - w) / 2 - x;
            ds.offset[1] = (r.height / scale - h) / 2 - y;
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
            return {{x: r.x + (x + ds.offset[0]) * scale, y: r.y + (y + ds.offset[1]) * scale,
                     width: w * scale, height: h * scale, scale}};
        }})()""")
        time.sleep(0.5)  # DOM widgets (the note's textarea) follow the canvas on the next frame
        return rect

    def layout_problems(self) -> list[str]:
        """What keeps a person from reading the loaded graph: nodes drawn over each other (title bars included),
        group titles covered by nodes, text widgets whose text does not fit (they scroll)."""
        return self.page.evaluate("""(() => {
            const th = LiteGraph.NODE_TITLE_HEIGHT, out = [];
            const nodes = app.graph.nodes.map(n => ({name: n.title || n.type, r: [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th], n}));
            const hit = (a, b) => a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
            for (let i = 0; i < nodes.length; i++)
                for (let j = i + 1; j < nodes.length; j++)
                    if (hit(nodes[i].r, nodes[j].r)) out.push(`node '${nodes[i].name}' overlaps node '${nodes[j].name}'`);
            for (const g of (app.graph.groups || app.graph._groups || [])) {
                const b = g._bounding || g.bounding;
                const bar = [b[0], b[1], b[2], g.titleHeight ?? (g.font_size || 24) * 1.4];
                const over = nodes.filter(x => hit(bar, x.r)).map(x => x.name);
                if (over.length) out.push(`group '${g.title}': title bar covered by ${over.join(', ')}`);
            }
            for (const x of nodes)
                for (const w of (x.n.widgets || [])) {
                    const el = w.element || w.inputEl;
                    if (el && el.tagName === 'TEXTAREA' && el.scrollHeight > el.clientHeight + 2)
                        out.push(`node '${x.name}': ${w.name} text cut off (${el.scrollHeight} px of text in ${el.clientHeight} px)`);
                }
            return out;
        })()""") or []

    def press_run(self) -> str:
        """Click the Run (queue) button like a user; returns how it was pressed."""
        try:
            self.page.click_selector('[data-testid="queue-button"] button')
            return "clicked [data-testid=queue-button]"
        except BrowserError:
            self.page.evaluate("app.queuePrompt(0)")
            return "app.queuePrompt(0) (no visible queue button)"
