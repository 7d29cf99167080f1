"""Simulated PVE servers for the tests: fakepve (a real HTTPS peer speaking the PVE API) and what the
tests add to it.

- allow_token / fingerprint_of: a fake that knows the seeded API token, and the SHA-256 fingerprint
  of fakepve's certificate (what a server pins).
- OpsPve: fakepve, plus what it does not model the way the operations need — service restarts as
  `srvrestart` tasks that take time, ACME orders/renewals whose task log grows step by step as on
  a real node (pve-manager PVE/API2/ACME.pm), and certificates/info with a pveproxy-ssl.pem whose
  expiry a test sets. Served over real HTTPS with fakepve's own PKI.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fakepve.model import PveError as FakePveError, TaskError
from fakepve.pytest_plugin import _Serving
from fakepve.server import USER, FakePve, ok, params

from tests.support.seed import TOKEN
from worker.operations.service_restart import SERVICES


def allow_token(pve: FakePve, token: str = TOKEN) -> FakePve:
    """Make the fake accept the API token USER@REALM!TOKENID=SECRET."""
    user, rest = token.split("!", 1)
    tokenid, secret = rest.split("=", 1)
    pve.apitokens[f"{user}!{tokenid}"] = secret
    return pve


def fingerprint_of(certfile) -> str:
    """SHA-256 of a PEM certificate's DER bytes, in hex (what `--fingerprint` pins)."""
    der = x509.load_pem_x509_certificate(Path(certfile).read_bytes()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


DAY = 86400

ACME_LOG = [
    "Loading ACME account details",
    "Placing ACME order",
    "Order URL: https://acme-v02.api.letsencrypt.org/acme/order/1234567/89012345",
    "",
    "Getting authorization details from 'https://acme-v02.api.letsencrypt.org/acme/authz-v3/4567890'",
    "... pending!",
    "Setting up webserver",
    "Triggering validation",
    "Sleeping for 5 seconds",
    "Status is 'valid'!",
    "",
    "All domains validated!",
    "",
    "Creating CSR",
    "Finalizing order",
    "Checking order status",
    "valid!",
    "",
    "Downloading certificate",
    "Setting pveproxy certificate and key",
    "Restarting pveproxy",
]


class OpsPve(FakePve):
    """fakepve with service restarts, ACME certificate tasks and certificate info as a node has them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.restart_secs = 3.0            # PVE seconds a service restart takes
        self.cert_expiry: dict[str, float] = {}   # node -> notafter of its pveproxy-ssl.pem (none: no ACME cert)
        self.acme_step_secs = 1.0          # PVE seconds between two lines of an ACME task log
        self.acme_error: str | None = None # the ACME task ends with TASK ERROR: this, after "Triggering validation"
        self.acme_calls: list[tuple[str, str]] = []   # (method, node) of every ACME order/renewal

    def _register_stateful(self, r, formats):
        super()._register_stateful(r, formats)
        for p in formats:
            node = p + "/nodes/{node}"
            r.add_post(node + "/services/{service}/restart", self._ops_restart)
            r.add_get(node + "/certificates/info", self._ops_cert_info)
            r.add_post(node + "/certificates/acme/certificate", self._ops_acme)
            r.add_put(node + "/certificates/acme/certificate", self._ops_acme)

    def _ops_node(self, request) -> str:
        node = request.match_info["node"]
        if node not in self.nodes:
            raise FakePveError(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: "
                                    "Name or service not known")
        return node

    async def _ops_restart(self, request):
        node = self._ops_node(request)
        service = request.match_info["service"]
        if service not in SERVICES:
            raise FakePveError(400, "Parameter verification failed.",
                               {"service": f"value '{service}' does not have a value in the enumeration "
                                           f"'{', '.join(SERVICES)}'"})
        secs = self.restart_secs

        async def body():
            await self.pause(secs)
        upid = await self.task(node, "srvrestart", service, request[USER], body)
        return ok(upid)

    async def _ops_cert_info(self, request):
        node = self._ops_node(request)
        data = [{"filename": "pve-ssl.pem", "fingerprint": "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
                 "10:21:32:43:54:65:76:87:98:A9:BA:CB:DC:ED:FE:0F", "issuer": "CN=Proxmox Virtual Environment",
                 "subject": f"CN={node}.lan", "notbefore": int(time.time()) - 300 * DAY,
                 "notafter": int(time.time()) + 700 * DAY, "san": [f"DNS:{node}.lan"]}]
        if node in self.cert_expiry:
            notafter = int(self.cert_expiry[node])
            data.append({"filename": "pveproxy-ssl.pem", "fingerprint": f"AB:CD:{notafter % 100:02d}:" + ":".join(
                ["EF"] * 29), "issuer": "CN=R11,O=Let's Encrypt,C=US", "subject": f"CN={node}.example.org",
                "notbefore": notafter - 90 * DAY, "notafter": notafter, "san": [f"DNS:{node}.example.org"]})
        return ok(data)

    async def _ops_acme(self, request):
        node = self._ops_node(request)
        p = await params(request)
        force = str(p.get("force", "0")) in ("1", "true")
        renew = request.method == "PUT"
        expiry = self.cert_expiry.get(node)
        if renew and expiry is None:
            raise FakePveError(500, "No current (custom) certificate found, please order a new certificate!")
        if renew and expiry > time.time() + 30 * DAY and not force:
            raise FakePveError(400, "Parameter verification failed.",
                               {"force": "Certificate does not expire within the next 30 days, and 'force' is not set."})
        self.acme_calls.append((request.method, node))
        holder: dict = {}
        error = self.acme_error

        async def body():
            record = self.tasks[holder["upid"]] if "upid" in holder else self.tasklog[-1]
            for line in ACME_LOG + (["Revoking old certificate"] if renew else []):
                record["log"].append(line)
                await self.pause(self.acme_step_secs)
                if error and line == "Triggering validation":
                    raise TaskError(error)
            self.cert_expiry[node] = time.time() + 90 * DAY
        holder["upid"] = await self.task(node, "acmerenew" if renew else "acmenewcert", "", request[USER], body)
        return ok(holder["upid"])


def serve_ops(pki, time_scale: float) -> tuple[OpsPve, _Serving]:
    """An OpsPve over HTTPS with fakepve's PKI, knowing TOKEN; stop it with the _Serving's stop()."""
    pve = OpsPve(user="root@pam", password="secret", host="127.0.0.1", port=0)
    pve.time_scale = time_scale
    allow_token(pve)
    return pve, _Serving(pve, *pki)
