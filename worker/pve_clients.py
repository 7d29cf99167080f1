"""One PVE client per server, kept while the server's settings are unchanged.

Polling, operations and the console gateway all talk to a server through a `PveClient` (one
requests session, keep-alive, TLS set up once). They find it here by the server's settings row
(the named query poll_target or its equivalents: id, base_url, fallback_url, tls_mode,
tls_fingerprint, username, token_id, secret_ciphertext): the same row gives the same client; a
changed address, TLS setting or credential closes the old client and makes a new one, so a change
applies to the next call without a restart.
"""

from __future__ import annotations

import threading

from worker.crypto import Box
from worker.pve import CONFIG, PveClient, PveError, Target

# The columns of a server's row that decide how it is reached and authenticated.
KEY_COLUMNS = ("base_url", "fallback_url", "tls_mode", "tls_fingerprint", "username", "token_id",
               "secret_ciphertext")


class PveClients:
    """Thread-safe cache {server id: (settings key, client, target, row)}."""

    def __init__(self, box: Box, ca_file: str | None = None):
        self.box = box
        self.ca_file = ca_file
        self._clients: dict[str, tuple[tuple, PveClient, Target, dict]] = {}
        self._lock = threading.Lock()

    def get(self, row: dict) -> tuple[PveClient, Target]:
        """The server's client and the target it was made for (decrypting the secret once)."""
        cached = self._clients.get(str(row["id"]))
        if cached is not None and cached[3] is row:
            # The very row the client was made for (a poller reuses its rows between reads): no
            # key to compare, no lock — most polls.
            return cached[1], cached[2]
        if row["secret_ciphertext"] is None:
            raise PveError(CONFIG, "this server has no credentials: its address or TLS settings changed, so they were"
                           " removed; enter them again with `proxwatch servers update NAME --token …`", permanent=True)
        key = tuple(row[c] for c in KEY_COLUMNS)
        sid = str(row["id"])
        with self._lock:
            cached = self._clients.get(sid)
            if cached and cached[0] == key:
                self._clients[sid] = (*cached[:3], row)
                return cached[1], cached[2]
            if cached:
                cached[1].close()
            target = Target(base_url=row["base_url"], fallback_url=row["fallback_url"], tls_mode=row["tls_mode"],
                            fingerprint=row["tls_fingerprint"], username=row["username"], token_id=row["token_id"],
                            secret=self.box.open(row["secret_ciphertext"]), ca_file=self.ca_file)
            client = PveClient(target)
            self._clients[sid] = (key, client, target, row)
            return client, target

    def close(self) -> None:
        """Close every client (their HTTP sessions)."""
        with self._lock:
            for _, client, _, _ in self._clients.values():
                client.close()
            self._clients.clear()
