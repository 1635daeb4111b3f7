"""The public names of the consistency toolkit, pinned."""

from __future__ import annotations

import tidings.saga
import tidings.sqlalchemy
from tidings import ConfigurationError, TidingsError
from tidings._cron import CronError
from tidings.saga import SagaConflictError, SagaDefinitionError, SagaError, SagaNotFoundError
from tidings.sqlalchemy import OutsideTransactionError


def test_exported_members() -> None:
    assert sorted(tidings.saga.__all__) == [
        "ACTIVE", "Action", "Command", "Direction", "MemorySagaStore", "PARKED_STATES",
        "Parallel", "SAGA_ID_HEADER", "SAGA_STEP_HEADER", "Saga", "SagaConflictError",
        "SagaDefinitionError", "SagaEngine", "SagaError", "SagaNotFoundError", "SagaRecord",
        "SagaStatus", "SagaStore", "Sleep", "Step", "StepEvent",
        "StepFailedError",
    ]
    assert sorted(tidings.sqlalchemy.__all__) == [
        "DeadRow", "GroupCommit", "Inbox", "Lease", "Outbox", "OutboxDeadLetters",
        "OutboxRelay", "OutsideTransactionError", "SqlSagaStore", "create_tables",
        "execute_dml",
        "inbox_table", "leases_table", "metadata", "outbox_dead_table", "outbox_table",
        "saga_events_table", "sagas_table", "sqlite_engine",
    ]
    for module in (tidings.saga, tidings.sqlalchemy):
        for name in module.__all__:
            assert getattr(module, name) is not None, name


def test_errors_live_in_the_one_tree() -> None:
    for error in (SagaDefinitionError, OutsideTransactionError, CronError):
        assert issubclass(error, ConfigurationError)
    for error in (SagaError, SagaConflictError, SagaNotFoundError):
        assert issubclass(error, TidingsError)
    assert issubclass(SagaNotFoundError, LookupError)
