"""A small Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (standard library only): headless
Chromium loads a page at a given window width and reports what a reader would meet (layout, images, console errors).

The pipe protocol: Chromium reads commands from file descriptor 3 and writes replies and events to descriptor 4,
each a JSON message ended by a NUL byte. POSIX only (the descriptors are set up with fcntl and dup2).
"""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# keep it off the (closed) network and quiet; --no-sandbox: tests may run as root in a container
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
         "--allow-file-access-from-files", "--remote-debugging-pipe")


class Browser:
    """``with Browser(profile_dir) as b: b.open(url, width)`` → a :class:`Page` (one tab, reused)."""

    def __init__(self, profile, timeout=60):
        self.profile, self.timeout = profile, timeout
        self.proc, self.next_id, self.buffer, self.events = None, 0, b"", []

    def __enter__(self):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Chromium's ends go to descriptors 3 and 4 in the child; first onto descriptors above 9, so that dup2 always
        # copies (a dup2 onto itself would keep the close-on-exec flag and Chromium would find them closed)
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def onto_3_and_4():
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        try:
            self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                         close_fds=False, preexec_fn=onto_3_and_4, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            for fd in ends:
                os.close(fd)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)
        return self

    def __exit__(self, *exc):
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=False):
        """Send one command and wait for its reply (events that arrive meanwhile are kept in ``events``)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, deadline):
        """Wait for the event ``method`` (one already received counts); return it."""
        while True:
            for k, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(k)
            self.events.append(self._read_message(deadline))

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (JSON-able values)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url, width, height=900):
        """Load ``url`` in a ``width`` × ``height`` CSS px window; wait for the load event (every image loaded or
        failed); return the console errors met so far (messages and failed loads)."""
        self.events.clear()
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired", time.monotonic() + self.timeout)
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # laid out
        return self.console_errors()

    def console_errors(self):
        """The console errors, exceptions and failed loads reported since the page was opened."""
        errors = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                errors.append(p.get("exceptionDetails", {}).get("text", "exception"))
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        return errors

    def screenshot(self, path):
        """A PNG of the window as it is now (the first screen)."""
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))


# what the tests measure in the page: sideways overflow, images, anchors, and how large picture text renders
PAGE_FACTS = """(() => {
  const doc = document.documentElement, W = window.innerWidth;
  const wide = [...document.querySelectorAll('body *')].filter(el => {
    if (el.closest('.scroll, pre, details:not([open])')) return false;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > W + 1;
  }).map(el => el.tagName + (el.id ? '#' + el.id : '') + (el.className ? '.' + el.className : ''));
  const boxes = [...document.querySelectorAll('.scroll, pre')].filter(el => el.offsetParent !== null)
    .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.tagName + ':' + el.scrollWidth + '>'
      + el.clientWidth + ' ' + el.textContent.slice(0, 40));
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
    natural: i.naturalWidth, shown: i.getBoundingClientRect().width, visible: i.offsetParent !== null}));
  const anchors = [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href').slice(1))
    .filter(id => !document.getElementById(decodeURIComponent(id)));
  return {scrollWidth: doc.scrollWidth, width: W, wide, boxes, images, missingAnchors: anchors,
          toc: [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'))};
})()"""
