"""WSGI middleware around moto's app: records AWS requests, injects faults and latency, and
enforces AssumeRole session policies, as AWS would and moto does not.

Loaded in the emulator process with ``--wrapper tests.emulator.middleware:wrap``; controlled
over HTTP under ``/_emulator/`` (see `EmulatorMiddleware._control`).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cache
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import botocore.loaders
from botocore.model import ServiceModel
from werkzeug.test import Client

from orgrunner import iamdata

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

DEFAULT_ACCOUNT = "123456789012"
ASSUME_ROLE_PARAMS = ("RoleArn", "RoleSessionName", "SourceIdentity", "Policy", "DurationSeconds", "SerialNumber",
                      "TokenCode")
RULE_MATCH_FIELDS = ("service", "operation", "account", "target_account", "region")
RULE_FIELDS = {*RULE_MATCH_FIELDS, "code", "message", "status", "times", "probability", "latency_ms"}
_CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")
_REST_PROTOCOLS = ("rest-json", "rest-xml")


# ---- which service and operation a request is -------------------------------------------------


@dataclass(frozen=True)
class _Route:
    method: str
    path: re.Pattern[str]
    query: tuple[tuple[str, str], ...]  # required query keys (and values, "" = any)
    specificity: int
    service: str
    operation: str
    protocol: str


@cache
def _loader() -> botocore.loaders.Loader:
    return botocore.loaders.create_loader()


@cache
def _service_models(signing_name: str) -> tuple[ServiceModel, ...]:
    """The botocore models signed as `signing_name`: first among services named like it (s3 ->
    s3, s3control), else among all services (slow, once)."""
    names = _loader().list_available_services("service-2")
    key = signing_name.replace("-", "")
    likely = [n for n in names if n.replace("-", "").startswith(key)]
    for candidates in (likely, names):
        models = tuple(ServiceModel(_loader().load_service_model(n, "service-2"), n) for n in candidates)
        if matching := tuple(m for m in models if m.signing_name == signing_name):
            return matching
    return ()


def _route(service: str, operation: str, protocol: str, method: str, request_uri: str) -> _Route:
    path, _, query = request_uri.partition("?")
    pattern = ""
    for literal, name in re.findall(r"([^{]*)(?:\{([^}]*)\})?", path):
        pattern += re.escape(literal) + ("" if not name else ".+" if name.endswith("+") else "[^/]+")
    required = tuple(parse_qsl(query, keep_blank_values=True))
    specificity = len(re.sub(r"\{[^}]*\}", "", path)) + len(query)
    return _Route(method, re.compile(pattern), required, specificity, service, operation, protocol)


@cache
def _rest_routes(signing_name: str) -> list[_Route]:
    routes = [
        _route(m.service_name, op, m.protocol, http["method"], http["requestUri"])
        for m in _service_models(signing_name)
        if m.protocol in _REST_PROTOCOLS
        for op in m.operation_names
        for http in [m.operation_model(op).http]
    ]
    return sorted(routes, key=lambda r: -r.specificity)


def _resolve_rest(signing_name: str, method: str, path: str, query: dict[str, str]) -> _Route | None:
    for route in _rest_routes(signing_name):
        if (
            route.method == method
            and route.path.fullmatch(path)
            and all(k in query and v in ("", query[k]) for k, v in route.query)
        ):
            return route
    return None


@dataclass
class AwsRequest:
    signing_name: str
    service: str
    operation: str
    protocol: str  # botocore protocol: query, ec2, json, rest-json, rest-xml
    region: str
    access_key_id: str
    params: dict[str, str]  # query-protocol parameters

    @property
    def iam_actions(self) -> tuple[str, ...]:
        """The actions AWS checks for this request (orgrunner/iamdata.py's table, as the guard)."""
        return iamdata.required_actions(self.service, self.signing_name, self.operation)

    @property
    def assume_role_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {k: self.params.get(k) for k in ASSUME_ROLE_PARAMS}
        params["DurationSeconds"] = int(params["DurationSeconds"]) if params["DurationSeconds"] else None
        return params

    @property
    def target_account(self) -> str | None:
        arn = self.params.get("RoleArn", "")
        return arn.split(":")[4] if arn.count(":") >= 5 else None


def parse_request(environ: dict[str, Any], body: bytes) -> AwsRequest | None:
    """The AWS request in `environ`, or None if it is not a SigV4-signed AWS call."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if not match:
        return None
    access_key_id, region, signing_name = match.groups()
    params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        params.update(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
    service, operation, protocol = signing_name, "", "query"
    if target := environ.get("HTTP_X_AMZ_TARGET"):
        operation, protocol = target.rpartition(".")[2], "json"
    elif "Action" in params:
        operation = params["Action"]
        protocol = next((m.protocol for m in _service_models(signing_name) if m.protocol == "ec2"), "query")
    if operation:
        service = next((m.service_name for m in _service_models(signing_name) if operation in m.operation_names),
                       signing_name)
    elif route := _resolve_rest(signing_name, environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), params):
        service, operation, protocol = route.service, route.operation, route.protocol
    return AwsRequest(signing_name, service, operation, protocol, region, access_key_id, params)


# ---- AWS-shaped error responses ---------------------------------------------------------------


def error_response(protocol: str, code: str, message: str, status: int) -> tuple[dict[str, str], bytes]:
    """Headers and body of an AWS error in `protocol`'s shape."""
    request_id = str(uuid.uuid4())
    code_x, message_x = escape(code), escape(message)
    headers = {"x-amzn-RequestId": request_id}
    if protocol in ("json", "rest-json"):
        headers |= {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}
        return headers, json.dumps({"__type": code, "message": message}).encode()
    if protocol == "ec2":
        body = (
            f"<Response><Errors><Error><Code>{code_x}</Code><Message>{message_x}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
    elif protocol == "rest-xml":
        body = f"<Error><Code>{code_x}</Code><Message>{message_x}</Message><RequestId>{request_id}</RequestId></Error>"
    else:
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code_x}</Code><Message>{message_x}</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return headers | {"Content-Type": "text/xml"}, f'<?xml version="1.0" encoding="UTF-8"?>{body}'.encode()


def _access_denied(protocol: str) -> str:
    return {
        "ec2": "UnauthorizedOperation",
        "json": "AccessDeniedException",
        "rest-json": "AccessDeniedException",
    }.get(protocol, "AccessDenied")


# ---- session policies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """What one AssumeRole handed out, keyed by its AccessKeyId."""

    account: str
    role_arn: str
    session_name: str
    source_identity: str | None
    policy: str | None
    duration: int | None

    @property
    def arn(self) -> str:
        return f"arn:aws:sts::{self.account}:assumed-role/{self.role_arn.rpartition('/')[2]}/{self.session_name}"


def _action_matches(patterns: Any, action: str) -> bool:
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
        if re.fullmatch(regex, action, re.IGNORECASE):
            return True
    return False


def session_policy_verdict(policy: str, action: str) -> str:
    """'allow', 'explicit-deny' or 'implicit-deny' for `action` under session `policy` (Resource
    and Condition are taken as "*")."""
    statements = json.loads(policy).get("Statement", [])
    allowed = False
    for st in [statements] if isinstance(statements, dict) else statements:
        if "Action" in st:
            matches = _action_matches(st["Action"], action)
        else:
            matches = not _action_matches(st.get("NotAction", []), action)
        if matches and st.get("Effect") == "Deny":
            return "explicit-deny"
        allowed = allowed or (matches and st.get("Effect") == "Allow")
    return "allow" if allowed else "implicit-deny"


# ---- the middleware ----------------------------------------------------------------------------


def _rule_matches(rule: dict[str, Any], facts: dict[str, tuple[str | None, ...]]) -> bool:
    """Every match field the rule names matches (fnmatch) one of the request's facts for it."""
    return all(any(v is not None and fnmatchcase(v, rule[k]) for v in facts[k]) for k in RULE_MATCH_FIELDS if k in rule)


@dataclass
class _State:
    requests: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, Session] = field(default_factory=dict)
    latency_ms: float = 0
    enforce_session_policies: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class EmulatorMiddleware:
    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.state = _State()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = b""
        if length := int(environ.get("CONTENT_LENGTH") or 0):
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
        if environ.get("PATH_INFO", "").startswith("/_emulator/"):
            return self._control(environ, body, start_response)
        request = parse_request(environ, body)
        if request is None:
            return self.app(environ, start_response)
        with self.lock:
            session = self.state.sessions.get(request.access_key_id)
            latency_ms, fault = self._fault(request, session)
            error = fault or self._denial(request, session)
        time.sleep(latency_ms / 1000)
        if error:
            code, message, status = error
            headers, payload = error_response(request.protocol, code, message, status)
            self._record(request, session, status)
            start_response(f"{status} Error", list(headers.items()))
            return [payload]
        return self._forward(environ, start_response, request, session)

    def _fault(self, request: AwsRequest, session: Session | None) -> tuple[float, tuple[str, str, int] | None]:
        """The latency to add (global and matching rules') and the first matching rule's error."""
        facts: dict[str, tuple[str | None, ...]] = {
            "service": (request.service, request.signing_name),
            "operation": (request.operation,),
            "account": (session.account if session else DEFAULT_ACCOUNT,),
            "target_account": (request.target_account,),
            "region": (request.region,),
        }
        latency_ms = self.state.latency_ms
        for rule in self.state.rules:
            if not _rule_matches(rule, facts) or rule["hits"] >= rule.get("times", float("inf")):
                continue
            if self.state.rng.random() >= rule.get("probability", 1.0):
                continue
            rule["hits"] += 1
            latency_ms += rule.get("latency_ms", 0)
            if "code" in rule:
                return latency_ms, (
                    rule["code"],
                    rule.get("message", rule["code"]),
                    int(rule.get("status", 400)),
                )
        return latency_ms, None

    def _denial(self, request: AwsRequest, session: Session | None) -> tuple[str, str, int] | None:
        """AWS's refusal when the session policy does not allow every action the request needs,
        with the dependent actions AWS requires of each."""
        if not (self.state.enforce_session_policies and session and session.policy):
            return None
        for required in request.iam_actions:
            if required.lower() == "sts:getcalleridentity":  # AWS never denies it
                continue
            for action in sorted(iamdata.with_dependents({required})):
                verdict = session_policy_verdict(session.policy, action)
                if verdict == "allow":
                    continue
                why = "with an explicit deny in" if verdict == "explicit-deny" else "because no"
                message = f"User: {session.arn} is not authorized to perform: {action} {why} session policy"
                if verdict == "implicit-deny":
                    message += f" allows the {action} action"
                if action != required:
                    message += f" ({action} is required with {required})"
                if request.protocol == "ec2":
                    message = f"You are not authorized to perform this operation. {message}"
                return _access_denied(request.protocol), message, 403
        return None

    def _forward(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        request: AwsRequest,
        session: Session | None,
    ) -> Iterable[bytes]:
        status = [0]

        def capture(status_line: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            status[0] = int(status_line.split()[0])
            return start_response(status_line, headers, *exc_info)

        result = self.app(environ, capture)
        if request.operation == "AssumeRole":
            payload = b"".join(result)
            getattr(result, "close", lambda: None)()
            if status[0] == 200:
                self._remember_session(request, payload)
            result = [payload]
        self._record(request, session, status[0])
        return result

    def _remember_session(self, request: AwsRequest, payload: bytes) -> None:
        key = ElementTree.fromstring(payload).find(".//{*}AccessKeyId")
        if key is None or not key.text or not request.target_account:
            return
        p = request.assume_role_params
        session = Session(
            request.target_account,
            p["RoleArn"],
            p["RoleSessionName"],
            p["SourceIdentity"],
            p["Policy"],
            p["DurationSeconds"],
        )
        with self.lock:
            self.state.sessions[key.text] = session

    def _record(self, request: AwsRequest, session: Session | None, status: int) -> None:
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
        {"enabled"}, reset."""
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
            elif route == ("POST", "enforce-session-policies"):
                state.enforce_session_policies = bool(data["enabled"])
            elif route == ("POST", "reset"):
                moto = Client(self.app).post("/moto-api/reset")
                if moto.status_code != 200:
                    status, answer = "502 Bad Gateway", {"error": moto.get_data(as_text=True)[:500]}
                self.state = _State()
            else:
                status, answer = "404 Not Found", {"error": f"no such emulator endpoint: {route}"}
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]


def wrap(app: WSGIApp) -> EmulatorMiddleware:
    return EmulatorMiddleware(app)
