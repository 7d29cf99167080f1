"""The gateway's HTML: the noVNC page, the xterm.js page, and the page for a link that cannot be used.

Both console pages speak the same opening: the page opens /ws?token=…; the gateway's first message
is text JSON, {"type": "ready", …} or {"type": "error", "message": "<a sentence>"}; after "ready"
the socket carries the console (RFB for noVNC; for terminals, output as binary frames and input in
PVE's termproxy framing). When the gateway ends a session (killed, gateway stopped, the server
closed it) the WebSocket's close reason says why, and the page shows it.
"""

from __future__ import annotations

import html
import json

_STYLE = """
  html, body { margin: 0; height: 100%; background: #111827; color: #e5e7eb;
               font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
  #bar { height: 36px; display: flex; align-items: center; gap: 12px; padding: 0 12px;
         background: #1f2937; border-bottom: 1px solid #374151; }
  #bar b { font-weight: 600; }
  #state { padding: 2px 8px; border-radius: 10px; background: #374151; font-size: 12px; }
  #state.connected { background: #065f46; } #state.closed, #state.error { background: #7f1d1d; }
  #message { color: #fca5a5; }
  #bar button { margin-left: auto; background: #374151; color: #e5e7eb; border: 1px solid #4b5563;
                border-radius: 4px; padding: 3px 10px; cursor: pointer; }
  #screen { position: absolute; top: 37px; bottom: 0; left: 0; right: 0; overflow: hidden; }
"""

_COMMON_JS = """
const stateEl = document.getElementById("state"), messageEl = document.getElementById("message");
function show(state, text) {
  stateEl.textContent = {connecting: "Connecting…", connected: "Connected", closed: "Closed", error: "Not connected"}[state];
  stateEl.className = state; document.body.dataset.state = state;
  if (text !== undefined) { messageEl.textContent = text; }
}
const token = new URLSearchParams(location.search).get("token") || "";
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host
                         + "/ws?token=" + encodeURIComponent(token));
ws.binaryType = "arraybuffer";
let ready = null;
ws.addEventListener("close", (e) => {
  if (document.body.dataset.state === "error") return;
  show(ready ? "closed" : "error", e.reason || (ready ? "The console was closed." : "The gateway closed the connection."));
});
"""


def _page(title: str, body: str, script: str, head: str = "") -> str:
    t = html.escape(title)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t} — proxwatch console</title>
<meta name="viewport" content="width=device-width, initial-scale=1">{head}
<style>{_STYLE}</style></head>
<body data-state="connecting">
<div id="bar"><span id="state">Connecting…</span><b>{t}</b><span id="message" role="status" aria-live="polite"></span>{body}</div>
<div id="screen"></div>
<script type="module">{_COMMON_JS}{script}</script>
</body></html>"""


def vnc_page(title: str) -> str:
    script = """
import RFB from "/static/novnc/core/rfb.js";
// When the console ends, the last picture stays on the page, dimmed, under the reason (noVNC
// removes its canvas on disconnect; this listener runs before noVNC's own).
ws.addEventListener("close", () => {
  const canvas = document.querySelector("#screen canvas");
  if (!canvas || !canvas.width) return;
  const box = canvas.getBoundingClientRect(), img = new Image();
  img.src = canvas.toDataURL(); img.alt = "The console's last picture"; img.id = "last-frame";
  Object.assign(img.style, {position: "absolute", left: box.left + "px", top: box.top + "px",
                            width: box.width + "px", height: box.height + "px", opacity: "0.55"});
  document.body.appendChild(img);
});
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.type !== "ready") { show("error", m.message); return; }
  ready = m;
  // From here on the socket is noVNC's: it takes it over before the next message arrives.
  const rfb = new RFB(document.getElementById("screen"), ws, {credentials: {password: m.password}});
  rfb.scaleViewport = true;
  rfb.background = "#111827";
  rfb.addEventListener("connect", () => { document.body.dataset.connected = "1"; show("connected", ""); });
  rfb.addEventListener("credentialsrequired", () => rfb.sendCredentials({password: m.password}));
  rfb.addEventListener("securityfailure", (ev) => show("error", "VNC authentication failed: " + (ev.detail.reason || ev.detail.status)));
  document.getElementById("cad").onclick = () => rfb.sendCtrlAltDel();
  window.proxwatchConsole = rfb;
};
"""
    return _page(title, '<button id="cad" title="Send Ctrl-Alt-Del">Ctrl-Alt-Del</button>', script)


def term_page(title: str) -> str:
    head = '\n<link rel="stylesheet" href="/static/xterm/css/xterm.css">'
    script = """
import { Terminal } from "/static/xterm/lib/xterm.mjs";
import { FitAddon } from "/static/xterm-fit/lib/addon-fit.mjs";
const term = new Terminal({cursorBlink: true, fontSize: 14, scrollback: 5000,
                           theme: {background: "#111827"}});
const fit = new FitAddon();
term.loadAddon(fit);
term.open(document.getElementById("screen"));
fit.fit();
const encoder = new TextEncoder();
const send = (frame) => { if (ready && ws.readyState === WebSocket.OPEN) ws.send(frame); };
const resize = () => send("1:" + term.cols + ":" + term.rows + ":");
ws.onmessage = (e) => {
  if (typeof e.data === "string") {
    const m = JSON.parse(e.data);
    if (m.type !== "ready") { show("error", m.message); return; }
    ready = m; document.body.dataset.connected = "1"; show("connected", ""); resize(); term.focus();
    return;
  }
  term.write(new Uint8Array(e.data));
};
term.onData((d) => send("0:" + encoder.encode(d).length + ":" + d));
term.onResize(resize);
window.addEventListener("resize", () => fit.fit());
setInterval(() => send("2"), 30000);
window.proxwatchConsole = term;
"""
    return _page(title, "", script, head)


def error_page(message: str) -> str:
    m = html.escape(message)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Console unavailable — proxwatch</title>
<style>{_STYLE} main {{ max-width: 640px; margin: 80px auto; padding: 0 20px; }}
h1 {{ font-size: 20px; }} p {{ color: #fca5a5; font-size: 16px; }}</style></head>
<body data-state="error"><main><h1>This console cannot be opened</h1><p role="alert">{m}</p></main></body></html>"""


def index_page(sessions: int) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>proxwatch console gateway</title><style>{_STYLE}
main {{ max-width: 640px; margin: 80px auto; padding: 0 20px; }}</style></head>
<body><main><h1>proxwatch console gateway</h1>
<p>Open consoles from the dashboard's Guests page. Sessions open through this gateway now: {sessions}.</p>
</main></body></html>"""


def ready_message(session_id: str, protocol: str, target: str, password: str | None) -> str:
    return json.dumps({"type": "ready", "session_id": session_id, "protocol": protocol, "target": target,
                       "password": password})


def error_message(message: str) -> str:
    return json.dumps({"type": "error", "message": message})
