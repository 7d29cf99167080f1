"""The operation types proxwatch knows, in one list: each type's name, its handler, and the message a
failed one shows. The SQL side (supabase/migrations: the check on active_operations.operation_type,
enqueue_operation(), operation_estimate()) lists the same names in the same order; a test keeps
them equal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# Imported module by module, not from the package: the package imports the manager, which
# imports this registry.
import worker.operations.certificate_renewal as certificate_renewal
import worker.operations.guest_power as guest_power
import worker.operations.service_restart as service_restart
import worker.operations.ssh_test as ssh_test
from worker.operations.context import Context

Handler = Callable[[Context], tuple[str, dict]]


@dataclass(frozen=True)
class OperationType:
    name: str
    #: Runs the operation to its end: (the message of the completed operation, what it learned),
    #: or OperationFailed with a sentence.
    run: Handler
    #: The operation's message when it failed (its error says why).
    failed: str


REGISTRY: dict[str, OperationType] = {t.name: t for t in (
    OperationType("ssh_test", ssh_test.run, "SSH test failed"),
    OperationType("service_restart", service_restart.run, "Restart failed"),
    OperationType("certificate_renewal", certificate_renewal.run, "Renewal failed"),
    *(OperationType(action, guest_power.run, f"{action.capitalize()} failed") for action in guest_power.POWER_ACTIONS),
)}
TYPES = tuple(REGISTRY)
