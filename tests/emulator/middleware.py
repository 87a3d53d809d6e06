"""The tests' WSGI middleware around moto's app: the shared strict layer (orgrunner/sandbox/emulator.py:
AssumeRole only into roles that trust the caller, session policies with dependent actions,
DescribeRegions per partition, Security Hub controls), plus request recording, injected faults
and latency, and a control API.

Loaded in the emulator process with ``--wrapper tests.emulator.middleware:wrap``; controlled
over HTTP under ``/_emulator/`` (see `EmulatorMiddleware._control`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from werkzeug.test import Client

from orgrunner.sandbox.emulator import (
    DEFAULT_ACCOUNT,
    ApiError,
    AwsRequest,
    Session,
    StrictAws,
    StrictState,
    WSGIApp,
    error_response,
    parse_request,
    session_policy_verdict,
)

__all__ = ["EmulatorMiddleware", "error_response", "parse_request", "session_policy_verdict", "wrap"]

RULE_MATCH_FIELDS = ("service", "operation", "account", "target_account", "region")
RULE_FIELDS = {*RULE_MATCH_FIELDS, "code", "message", "status", "times", "probability", "latency_ms"}


def _rule_matches(rule: dict[str, Any], facts: dict[str, tuple[str | None, ...]]) -> bool:
    """Every match field the rule names matches (fnmatch) one of the request's facts for it."""
    return all(any(v is not None and fnmatchcase(v, rule[k]) for v in facts[k]) for k in RULE_MATCH_FIELDS if k in rule)


@dataclass
class _State(StrictState):
    requests: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0
    moto_describe_regions: bool = False  # let moto answer DescribeRegions (every partition's regions)
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class EmulatorMiddleware(StrictAws):
    # Tests turn session-policy enforcement on where they check it (`enforce_session_policies`).
    enforce_by_default = False
    state: _State

    def _new_state(self) -> _State:
        return _State(enforce_session_policies=self.enforce_by_default)

    def _before(self, request: AwsRequest, session: Session | None) -> tuple[str, str, int] | None:
        """Sleep the latency (global and matching rules'); the first matching rule's error."""
        facts: dict[str, tuple[str | None, ...]] = {
            "service": (request.service, request.signing_name),
            "operation": (request.operation,),
            "account": (session.account if session else DEFAULT_ACCOUNT,),
            "target_account": (request.target_account,),
            "region": (request.region,),
        }
        error: tuple[str, str, int] | None = None
        with self.lock:
            latency_ms = self.state.latency_ms
            for rule in self.state.rules:
                if not _rule_matches(rule, facts) or rule["hits"] >= rule.get("times", float("inf")):
                    continue
                if self.state.rng.random() >= rule.get("probability", 1.0):
                    continue
                rule["hits"] += 1
                latency_ms += rule.get("latency_ms", 0)
                if "code" in rule:
                    error = (rule["code"], rule.get("message", rule["code"]), int(rule.get("status", 400)))
                    break
        time.sleep(latency_ms / 1000)
        return error

    def _emulate(self, request: AwsRequest, session: Session | None,
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        if self.state.moto_describe_regions and request.operation == "DescribeRegions":
            return None
        return super()._emulate(request, session, body)

    def _after(self, request: AwsRequest, session: Session | None, status: int) -> None:
        entry: dict[str, Any] = {
            "service": request.service,
            "operation": request.operation,
            "account": session.account if session else DEFAULT_ACCOUNT,
            "region": request.region,
            "access_key_id": request.access_key_id[:4] + "...",
            # who signed, without the key id itself: tests/test_safety_workers.py tells the operator's requests apart
            "access_key_sha256": hashlib.sha256(request.access_key_id.encode()).hexdigest()[:16],
            "session": session.session_name if session else None,
            "status": status,
        }
        if request.operation == "AssumeRole":
            entry["target_account"] = request.target_account
            entry["params"] = request.assume_role_params
        with self.lock:
            self.state.requests.append(entry)

    # ---- /_emulator/ control API -------------------------------------------------------------

    def _control(self, environ: dict[str, Any], body: bytes, start_response: Callable[..., Any]) -> list[bytes]:
        """GET requests; POST/DELETE rules; POST latency {"ms"}, enforce-session-policies
        {"enabled"}, moto-describe-regions {"enabled"}, role-propagation {"seconds"}, securityhub-central
        {"administrator", "region", "associations": {account: policy id or SELF_MANAGED_SECURITY_HUB}}, reset."""
        route = (environ["REQUEST_METHOD"], environ["PATH_INFO"].removeprefix("/_emulator/").rstrip("/"))
        data = json.loads(body) if body else {}
        answer: Any
        status, answer = "200 OK", {}
        with self.lock:
            state = self.state
            if route == ("GET", "requests"):
                answer = list(state.requests)
            elif route == ("GET", "rules"):
                answer = list(state.rules)
            elif route == ("POST", "rules"):
                if unknown := set(data) - RULE_FIELDS:
                    status, answer = "400 Bad Request", {"error": f"unknown rule fields: {sorted(unknown)}"}
                elif "code" not in data and "latency_ms" not in data:
                    status, answer = "400 Bad Request", {"error": "a rule needs a code or latency_ms"}
                else:
                    state.rules.append({**data, "id": len(state.rules) + 1, "hits": 0})
                    answer = {"id": len(state.rules)}
            elif route == ("DELETE", "rules"):
                state.rules.clear()
            elif route == ("POST", "latency"):
                state.latency_ms = float(data["ms"])
            elif route == ("POST", "moto-describe-regions"):
                state.moto_describe_regions = bool(data["enabled"])
            elif route == ("POST", "role-propagation"):
                state.set_role_propagation(float(data["seconds"]))
            elif route == ("POST", "enforce-session-policies"):
                state.enforce_session_policies = bool(data["enabled"])
            elif route == ("POST", "securityhub-central"):
                try:
                    state.securityhub.set_central(str(data["administrator"]), str(data["region"]),
                                                  dict(data["associations"]))
                except (KeyError, TypeError, ValueError, ApiError) as exc:
                    status, answer = "400 Bad Request", {"error": f"securityhub-central: {exc!r}"}
            elif route == ("POST", "reset"):
                moto = Client(self.app).post("/moto-api/reset")
                if moto.status_code != 200:
                    status, answer = "502 Bad Gateway", {"error": moto.get_data(as_text=True)[:500]}
                self.state = self._new_state()
            else:
                status, answer = "404 Not Found", {"error": f"no such emulator endpoint: {route}"}
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]


def wrap(app: WSGIApp) -> EmulatorMiddleware:
    return EmulatorMiddleware(app)
