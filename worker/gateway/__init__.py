"""The console gateway: browser consoles (noVNC, xterm.js) bridged to PVE's vncwebsocket or to SSH.

`python -m worker.gateway` (the Procfile's `console` process) serves, on its own port (loopback by
default, PROXWATCH_GATEWAY_HOST / PROXWATCH_GATEWAY_PORT):

- GET /console?token=…  the console page (noVNC for a qemu display, xterm.js for terminals);
- GET /ws?token=…       the WebSocket the page opens; the gateway consumes the single-use token,
                        requests the PVE ticket with the server's stored credentials (audited),
                        opens PVE's vncwebsocket (or an SSH shell with the node's pinned host key),
                        registers the session within the limits, and pipes bytes both ways;
- /static/…             noVNC and xterm.js from node_modules (installed by `npm install`).

While a session is open the gateway heartbeats it every 30 s (one statement for all of them) and
checks every second whether an admin killed it; it closes the registry row when either side ends.
See worker/gateway/app.py.
"""
