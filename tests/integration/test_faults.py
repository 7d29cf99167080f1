"""The fault bodies the fleet simulator produces (tests/bench/simpve.py), each through one real poll:
the real Poller over real HTTPS against simpve running in this process, the row written by the real
Recorder into Postgres. Every failure lands as a known error_kind with a sentence, and the server
answers again on the next poll once the fault ends, through the same Poller (no restart).

These are the faults of the fault-injection report (tests/bench/bench_faults.py); the report
counts them over a fleet, this file pins what each one is classified as.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest

from tests.bench import simpve
from tests.support.seed import TOKEN
from tests.support.waiting import free_port
from worker.polling import Poller, Recorder, utcnow
from worker.pve import AUTH, BAD_RESPONSE, HTTP, NETWORK, TIMEOUT, TLS

VOCABULARY = {"timeout", "refused", "dns", "network", "tls", "auth", "http", "bad_response", "config"}


class Sim:
    """simpve's app on free ports of 127.0.0.1 in a background event loop; `set(port → mode)` switches faults."""

    def __init__(self, directory):
        from fakepve.certs import make_cert

        self.cert, self.key, der = make_cert(str(directory), name="simpve", hosts=("127.0.0.1",))
        self.alt_cert, self.alt_key, _ = make_cert(str(directory), name="simpve-renewed", hosts=("127.0.0.1",))
        self.fingerprint = hashlib.sha256(der).hexdigest()
        self.faults = simpve.Faults()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ports: list[int] = []
        self.runner = None

    def start(self, count: int) -> list[str]:
        self.ports = [free_port() for _ in range(count)]
        self.runner = self._run(simpve.start_minimal("127.0.0.1", self.ports, self.cert, self.key, 0.0, TOKEN,
                                                     self.faults, self.alt_cert, self.alt_key))
        return [f"https://127.0.0.1:{p}" for p in self.ports]

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def set(self, modes: dict[int, str], drop: float = 0.0) -> None:
        async def apply():
            self.faults.set(modes, drop)
        self._run(apply())

    def close(self) -> None:
        if self.runner is not None:
            self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path)
    yield s
    s.close()


@pytest.fixture
def poller(pool, box, settings):
    return Poller(pool, box, settings)


def poll(poller, pool, settings, server_id):
    """One poll, recorded; returns the stored row."""
    result = poller.poll(str(server_id), utcnow())
    Recorder(pool, settings).write([result])
    with pool.connection() as conn:
        return conn.execute("select * from connection_metrics where server_id = %s order by scheduled_at desc"
                            " limit 1", (str(server_id),)).fetchone()


# fault mode → (error_kind, words the sentence holds)
CASES = {
    "401": (AUTH, "refused the credentials (401"),
    "500": (HTTP, "answered 500"),
    "595": (HTTP, "answered 595 Errors during connection establishment"),
    "html": (BAD_RESPONSE, "something that is not the PVE API"),
    "garbage": (BAD_RESPONSE, "something that is not the PVE API"),
    "oddversion": (BAD_RESPONSE, "something that is not the PVE API"),
    "tls": (TLS, "fingerprint does not match the pinned one"),
    "hang": (TIMEOUT, "did not answer within 300 ms"),
}


def test_every_fault_of_the_simulator_is_a_known_kind_with_a_sentence_and_the_next_poll_recovers(
        sim, add_server, conn, poller, pool, settings):
    urls = sim.start(len(CASES))
    servers = {}
    for (mode, _), url, port in zip(CASES.items(), urls, sim.ports):
        servers[mode] = (port, str(add_server(f"sim-{mode}", url, token=TOKEN, fingerprint=sim.fingerprint)["id"]))
    # A hang is cut at the server's timeout: a short learned one keeps this test fast.
    conn.execute("update proxmox_servers set learned_timeout_ms = 300 where id = %s", (servers["hang"][1],))
    conn.commit()

    # Given every server answered once (keep-alive connections are open, as in a running worker)
    for mode, (_, sid) in servers.items():
        assert poll(poller, pool, settings, sid)["success"], mode

    # When each server shows its fault
    sim.set({port: mode for mode, (port, _) in servers.items()})

    # Then each poll is a failed row with the expected kind and a sentence naming the server
    for mode, (port, sid) in servers.items():
        row = poll(poller, pool, settings, sid)
        kind, words = CASES[mode]
        assert row["success"] is False, mode
        assert row["error_kind"] == kind and row["error_kind"] in VOCABULARY, (mode, row["error_kind"],
                                                                               row["error_message"])
        assert words in row["error_message"] and f"127.0.0.1:{port}" in row["error_message"], \
            (mode, row["error_message"])

    # And once the faults end, the same poller succeeds again (new TLS session after the certificate change)
    sim.set({})
    for mode, (_, sid) in servers.items():
        assert poll(poller, pool, settings, sid)["success"], mode


def test_a_dropped_connection_is_a_network_failure_and_the_next_poll_reconnects(sim, add_server, poller, pool,
                                                                               settings):
    url, = sim.start(1)
    sid = str(add_server("sim-drop", url, token=TOKEN, fingerprint=sim.fingerprint)["id"])
    assert poll(poller, pool, settings, sid)["success"]

    sim.set({}, drop=1.0)
    row = poll(poller, pool, settings, sid)
    assert row["success"] is False and row["error_kind"] == NETWORK
    assert "closed the connection before answering" in row["error_message"]

    sim.set({}, drop=0.0)
    assert poll(poller, pool, settings, sid)["success"]
