"""The client-side call guard: a botocore event hook on every client handed to a task.

It lets through only the operations whose IAM actions (from AWS's data, orgrunner/safety/iamdata.py) the
task declared for the current phase, and during the plan phase only operations whose actions AWS
classes as List or Read. A refused call raises `CallNotAllowed`
before the request is even built, so nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from orgrunner.errors import CallNotAllowed
from orgrunner.safety import iamdata
from orgrunner.safety.policy import is_read_action, required_actions
from orgrunner.task import Phase


class CallGuard:
    def __init__(self, task_name: str, phase: Phase, allowed_actions: tuple[str, ...]) -> None:
        self.task_name = task_name
        self.phase = phase
        self.allowed = frozenset(a.lower() for a in allowed_actions)
        self.refused: list[str] = []

    def check(self, service_name: str, signing_name: str, operation: str) -> None:
        for action in required_actions(service_name, signing_name, operation):
            if self.phase == "plan" and not is_read_action(action):
                level = iamdata.access_level(action) or "no action AWS lists"
                self._refuse(f"task {self.task_name!r} called {action}, a write, during the plan phase (dry run; "
                             f"AWS's access level: {level}); refused")
            if action.lower() not in self.allowed:
                self._refuse(f"task {self.task_name!r} called {action}, which it did not declare for the "
                             f"{self.phase} phase; refused")

    def _refuse(self, message: str) -> None:
        self.refused.append(message)
        raise CallNotAllowed(message)

    def raise_if_refused(self) -> None:
        """Fail the target even if the task caught the refusal and carried on."""
        if self.refused:
            raise CallNotAllowed(self.refused[0])

    def _hook(self, model: Any, **_: Any) -> None:
        self.check(model.service_model.service_name, model.service_model.signing_name, model.name)

    def install(self, client: Any) -> Any:
        """Register the guard first on the client's own event emitter; return the client."""
        service_id = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register_first(f"before-parameter-build.{service_id}.*", self._hook)
        return client

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within this block (this thread), clients made with `install_shared` are guarded by this guard."""
        token = _active.set(self)
        try:
            yield
        finally:
            _active.reset(token)


_active: contextvars.ContextVar[CallGuard | None] = contextvars.ContextVar("orgrunner_call_guard", default=None)


def _dispatch(model: Any, **_: Any) -> None:
    guard = _active.get()
    if guard is None:
        raise CallNotAllowed(f"{model.service_model.signing_name}:{model.name} called outside any task target "
                             "(from a thread the engine did not start?); refused")
    guard.check(model.service_model.service_name, model.service_model.signing_name, model.name)


def install_shared(client: Any) -> Any:
    """Guard a client shared by many jobs: each call is checked by the guard active in its thread,
    and a call with no active guard is refused."""
    service_id = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register_first(f"before-parameter-build.{service_id}.*", _dispatch)
    return client
