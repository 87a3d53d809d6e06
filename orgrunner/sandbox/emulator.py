"""The emulator layer: moto's server, made to say no where AWS says no.

Shared by the sandbox (`orgrunner sandbox`, whose emulator child wraps moto's WSGI app with
`wrap` below) and the tests (tests/emulator/middleware.py adds recording, faults and a control
API on top). moto accepts any role, ignores session policies, lists every partition's regions and
lacks the Security Hub controls API; here:

- AssumeRole succeeds only into a role that exists in the account and trusts the caller, and
  Organizations' CreateAccount creates `OrganizationAccountAccessRole` in the new member (trusting
  the management account), as Organizations does; like AWS, which refuses AssumeRole into that
  role with AccessDenied for a while after CreateAccount (it propagates), the emulator refuses it
  for `StrictState.role_propagation_seconds` after the account was created (0, the default: never);
- session policies are enforced, with the dependent actions AWS requires of each action
  (orgrunner/safety/iamdata.py: the same table the guard uses);
- DescribeRegions answers for the caller's partition only: default regions enabled, opt-in
  regions `not-opted-in`;
- credentials belong to one partition (a session to its role's, the default credentials to the
  partition their organization was created in): a request signed for another partition's region
  is refused as AWS refuses it (the token is not valid there);
- GetEbsDefaultKmsKeyId / ModifyEbsDefaultKmsKeyId / ResetEbsDefaultKmsKeyId (moto answers 500)
  are kept per account and region: AWS's managed `alias/aws/ebs` until changed, and a new key
  must be an enabled symmetric key of moto's KMS in that account and region;
- Organizations' account lifecycle as AWS runs it (`OrganizationsRules`): CreateAccount is
  asynchronous and fails on an email in use (EMAIL_ALREADY_EXISTS), CloseAccount refuses the
  management account and beyond AWS's quota, closed accounts pass through PENDING_CLOSURE;
  MoveAccount and CreateOrganizationalUnit refuse what AWS refuses; a session policy's Resource
  is matched for CloseAccount (the account's ARN);
- the Security Hub hub, standards and standards-control calls are a small stateful emulation with
  AWS's documented shapes and errors, including a delegated administrator's central configuration
  (`SecurityHub.set_central`: ConfigurationType CENTRAL and one configuration policy association
  per account; a member under a policy cannot update its own controls).

moto is imported only inside functions: this module imports without it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import botocore.loaders
from botocore.model import ServiceModel

from orgrunner.safety import iamdata

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

DEFAULT_ACCOUNT = "123456789012"
ASSUME_ROLE_PARAMS = ("RoleArn", "RoleSessionName", "SourceIdentity", "Policy", "DurationSeconds", "SerialNumber",
                      "TokenCode")
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
        """The actions AWS checks for this request (orgrunner/safety/iamdata.py's table, as the guard)."""
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
        partition = self.role_arn.split(":")[1] if self.role_arn.count(":") >= 5 else "aws"
        role = self.role_arn.rpartition("/")[2]
        return f"arn:{partition}:sts::{self.account}:assumed-role/{role}/{self.session_name}"


def _action_matches(patterns: Any, action: str) -> bool:
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
        if re.fullmatch(regex, action, re.IGNORECASE):
            return True
    return False


def session_policy_verdict(policy: str, action: str, resource: str | None = None) -> str:
    """'allow', 'explicit-deny' or 'implicit-deny' for `action` under session `policy`. Resource and
    NotResource are matched against `resource` when the request's ARN is known (Organizations'
    CloseAccount), else taken as "*"; Condition is taken as "*"."""
    statements = json.loads(policy).get("Statement", [])
    allowed = False
    for st in [statements] if isinstance(statements, dict) else statements:
        if "Action" in st:
            matches = _action_matches(st["Action"], action)
        else:
            matches = not _action_matches(st.get("NotAction", []), action)
        if resource is not None and "Resource" in st:
            matches = matches and _action_matches(st["Resource"], resource)
        elif resource is not None and "NotResource" in st:
            matches = matches and not _action_matches(st["NotResource"], resource)
        if matches and st.get("Effect") == "Deny":
            return "explicit-deny"
        allowed = allowed or (matches and st.get("Effect") == "Allow")
    return "allow" if allowed else "implicit-deny"


# ---- partitions and regions --------------------------------------------------------------------

# Regions enabled in every account of the aws partition; every other aws region is opt-in (those
# launched after March 2019). GovCloud and China regions are all enabled by default.
AWS_DEFAULT_REGIONS = frozenset({
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ap-south-1", "ap-northeast-1", "ap-northeast-2",
    "ap-northeast-3", "ap-southeast-1", "ap-southeast-2", "ca-central-1", "eu-central-1", "eu-west-1",
    "eu-west-2", "eu-west-3", "eu-north-1", "sa-east-1",
})


@cache
def _partitions() -> dict[str, tuple[str, ...]]:
    """Partition -> its regions, from botocore's endpoint data."""
    import botocore.session

    session = botocore.session.get_session()
    return {p: tuple(session.get_available_regions("ec2", p)) for p in session.get_available_partitions()}


def partition_of_region(region: str) -> str:
    return next((p for p, regions in _partitions().items() if region in regions), "aws")


def region_opt_in_status(partition: str, region: str) -> str:
    if partition != "aws" or region in AWS_DEFAULT_REGIONS:
        return "opt-in-not-required"
    return "not-opted-in"


def _dns_suffix(partition: str) -> str:
    return "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"


def describe_regions_xml(partition: str, params: dict[str, str]) -> bytes:
    """EC2 DescribeRegions for one partition: enabled regions, or all with AllRegions=true."""
    all_regions = params.get("AllRegions", "false").lower() == "true"
    wanted = {v for k, v in params.items() if k.startswith("RegionName.")}
    items = []
    for region in _partitions().get(partition, ()):
        status = region_opt_in_status(partition, region)
        if (wanted and region not in wanted) or (not all_regions and status == "not-opted-in"):
            continue
        items.append(f"<item><regionName>{region}</regionName><regionEndpoint>ec2.{region}.{_dns_suffix(partition)}"
                     f"</regionEndpoint><optInStatus>{status}</optInStatus></item>")
    return (f'<?xml version="1.0" encoding="UTF-8"?><DescribeRegionsResponse xmlns="http://ec2.amazonaws.com/'
            f'doc/2016-11-15/"><requestId>{uuid.uuid4()}</requestId><regionInfo>{"".join(items)}</regionInfo>'
            f"</DescribeRegionsResponse>").encode()


# ---- Security Hub standards and controls ------------------------------------------------------

FSBP = "aws-foundational-security-best-practices/v/1.0.0"
CIS_1_2 = "cis-aws-foundations-benchmark/v/1.2.0"
CIS_3_0 = "cis-aws-foundations-benchmark/v/3.0.0"
# The controls each emulated standard holds (a subset of AWS's; the ones the tasks care about).
STANDARD_CONTROLS: dict[str, tuple[str, ...]] = {
    FSBP: ("EC2.2", "EC2.7", "IAM.4", "IAM.6", "S3.1", "S3.8"),
    CIS_1_2: ("EC2.2", "IAM.4", "IAM.6", "IAM.15", "IAM.16"),
    CIS_3_0: ("EC2.2", "EC2.7", "IAM.4", "IAM.6", "IAM.15", "IAM.16", "S3.1"),
}
DEFAULT_STANDARDS = (FSBP, CIS_1_2)  # what EnableSecurityHub's EnableDefaultStandards subscribes to


def standards_arn(partition: str, region: str, standard: str) -> str:
    if standard == CIS_1_2:
        return f"arn:{partition}:securityhub:::ruleset/{standard}"
    return f"arn:{partition}:securityhub:{region}::standards/{standard}"


def _standard_of(arn: str) -> str | None:
    tail = arn.split(":", 5)[5] if arn.count(":") >= 5 else ""
    standard = tail.split("/", 1)[1] if "/" in tail else ""
    return standard if standard in STANDARD_CONTROLS else None


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.reason = code, message, status, reason


@dataclass
class _Hub:
    subscribed_at: str
    standards: dict[str, str] = field(default_factory=dict)  # standards ARN -> status (READY)
    # (standards ARN, control id) -> {"AssociationStatus", "UpdatedReason", "UpdatedAt"}
    controls: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


SELF_MANAGED = "SELF_MANAGED_SECURITY_HUB"
CENTRAL_REFUSAL = ("This account is currently associated with a central configuration policy, so only the "
                   "administrator can access this operation.")


@dataclass
class _CentralConfiguration:
    """A delegated administrator's central configuration in one region (ConfigurationType CENTRAL):
    account -> its configuration policy association (a policy id, or SELF_MANAGED_SECURITY_HUB)."""

    associations: dict[str, str] = field(default_factory=dict)
    updated_at: str = field(default_factory=_now)


class SecurityHub:
    """Per account and region: the hub, its standards subscriptions and control associations; per
    delegated administrator and region, its central configuration (set up by `set_central`)."""

    OPERATIONS = frozenset({
        "EnableSecurityHub", "DisableSecurityHub", "DescribeHub", "GetEnabledStandards", "BatchEnableStandards",
        "BatchGetStandardsControlAssociations", "BatchUpdateStandardsControlAssociations",
        "DescribeOrganizationConfiguration", "GetConfigurationPolicyAssociation",
    })

    def __init__(self) -> None:
        self.hubs: dict[tuple[str, str], _Hub] = {}
        self.central: dict[tuple[str, str], _CentralConfiguration] = {}  # (administrator, region) ->

    def set_central(self, administrator: str, region: str, associations: dict[str, str]) -> None:
        """Make `administrator` the delegated administrator of a central configuration in `region`,
        each account of `associations` associated with a configuration policy id or SELF_MANAGED."""
        for account, policy in associations.items():
            if not re.fullmatch(r"\d{12}", account) or not policy:
                raise ApiError("InvalidInputException", f"bad association {account!r}: {policy!r}")
        self.central[(administrator, region)] = _CentralConfiguration(dict(associations))

    def _policy_of(self, account: str, region: str) -> str | None:
        """The configuration policy id `account` follows in `region` (None: self-managed or no central
        configuration)."""
        for (_, where), central in self.central.items():
            policy = central.associations.get(account, SELF_MANAGED) if where == region else SELF_MANAGED
            if policy != SELF_MANAGED:
                return policy
        return None

    def handle(self, operation: str, account: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        partition = partition_of_region(region)
        key = (account, region)
        hub = self.hubs.get(key)
        if operation == "EnableSecurityHub":
            if hub is not None:
                raise ApiError("ResourceConflictException", f"Account {account} is already subscribed to Security Hub",
                               409)
            hub = self.hubs[key] = _Hub(_now())
            if body.get("EnableDefaultStandards", True):
                for standard in DEFAULT_STANDARDS:
                    self._subscribe(hub, partition, region, standard)
            return {}
        if hub is None:
            raise ApiError("InvalidAccessException", f"Account {account} is not subscribed to AWS Security Hub", 401)
        hub_arn = f"arn:{partition}:securityhub:{region}:{account}:hub/default"
        if operation == "DisableSecurityHub":
            del self.hubs[key]
            return {}
        if operation == "DescribeHub":
            return {"HubArn": hub_arn, "SubscribedAt": hub.subscribed_at, "AutoEnableControls": True,
                    "ControlFindingGenerator": "SECURITY_CONTROL"}
        if operation == "BatchEnableStandards":
            return {"StandardsSubscriptions": [
                self._subscription(partition, region, account, self._subscribe(
                    hub, partition, region, self._known_standard(r.get("StandardsArn", ""))))
                for r in body.get("StandardsSubscriptionRequests", [])]}
        if operation == "GetEnabledStandards":
            return {"StandardsSubscriptions": [self._subscription(partition, region, account, arn)
                                               for arn in hub.standards]}
        if operation == "BatchGetStandardsControlAssociations":
            return self._batch_get(hub, account, region, partition, body.get("StandardsControlAssociationIds", []))
        if operation == "BatchUpdateStandardsControlAssociations":
            if self._policy_of(account, region) is not None:
                raise ApiError("AccessDeniedException", CENTRAL_REFUSAL, 403)
            return self._batch_update(hub, body.get("StandardsControlAssociationUpdates", []))
        central = self.central.get(key)
        if central is None:  # only a delegated administrator may ask
            raise ApiError("AccessDeniedException", f"Account {account} is not the Security Hub administrator "
                           "account of an organization", 403)
        if operation == "DescribeOrganizationConfiguration":
            return {"AutoEnable": False, "MemberAccountLimitReached": False, "AutoEnableStandards": "NONE",
                    "OrganizationConfiguration": {"ConfigurationType": "CENTRAL", "Status": "ENABLED"}}
        return self._policy_association(central, body)

    @staticmethod
    def _policy_association(central: _CentralConfiguration, body: dict[str, Any]) -> dict[str, Any]:
        """GetConfigurationPolicyAssociation for an account target; an account without its own
        association inherits self-management (the emulation has no OUs to inherit from)."""
        target = body.get("Target") or {}
        if set(target) != {"AccountId"} or not re.fullmatch(r"\d{12}", str(target["AccountId"])):
            raise ApiError("InvalidInputException", "Target must name exactly one of AccountId, "
                           "OrganizationalUnitId or RootId; only AccountId targets are emulated")
        account = str(target["AccountId"])
        policy = central.associations.get(account)
        return {"ConfigurationPolicyId": policy or SELF_MANAGED, "TargetId": account, "TargetType": "ACCOUNT",
                "AssociationType": "APPLIED" if policy else "INHERITED", "AssociationStatus": "SUCCESS",
                "UpdatedAt": central.updated_at}

    @staticmethod
    def _known_standard(arn: str) -> str:
        standard = _standard_of(arn)
        if standard is None:
            raise ApiError("InvalidInputException", f"Invalid StandardsArn: {arn}")
        return standard

    @staticmethod
    def _subscribe(hub: _Hub, partition: str, region: str, standard: str) -> str:
        arn = standards_arn(partition, region, standard)
        hub.standards[arn] = "READY"
        for control in STANDARD_CONTROLS[standard]:
            hub.controls.setdefault((arn, control), {"AssociationStatus": "ENABLED", "UpdatedAt": _now()})
        return arn

    @staticmethod
    def _subscription(partition: str, region: str, account: str, arn: str) -> dict[str, Any]:
        standard = _standard_of(arn) or ""
        return {"StandardsSubscriptionArn": f"arn:{partition}:securityhub:{region}:{account}:subscription/{standard}",
                "StandardsArn": arn, "StandardsInput": {}, "StandardsStatus": "READY"}

    @staticmethod
    def _check_ids(items: list[Any], what: str) -> None:
        if not isinstance(items, list) or not items:
            raise ApiError("InvalidInputException", f"{what} must hold at least 1 item")
        if len(items) > 100:
            raise ApiError("InvalidInputException", f"{what} must hold at most 100 items")

    def _batch_get(self, hub: _Hub, account: str, region: str, partition: str, ids: list[Any]) -> dict[str, Any]:
        self._check_ids(ids, "StandardsControlAssociationIds")
        found, unprocessed = [], []
        for item in ids:
            key = (item.get("StandardsArn", ""), item.get("SecurityControlId", ""))
            state = hub.controls.get(key) if key[0] in hub.standards else None
            if state is None:
                unprocessed.append({"StandardsControlAssociationId": item, "ErrorCode": "RESOURCE_NOT_FOUND",
                                    "ErrorReason": f"{key[1]} is not a control of an enabled standard {key[0]}"})
                continue
            found.append({
                "StandardsArn": key[0], "SecurityControlId": key[1],
                "SecurityControlArn": f"arn:{partition}:securityhub:{region}:{account}:security-control/{key[1]}",
                "AssociationStatus": state["AssociationStatus"], "UpdatedAt": state["UpdatedAt"],
                "RelatedRequirements": [], **({"UpdatedReason": state["UpdatedReason"]}
                                              if "UpdatedReason" in state else {}),
            })
        return {"StandardsControlAssociationDetails": found, "UnprocessedAssociations": unprocessed}

    def _batch_update(self, hub: _Hub, updates: list[Any]) -> dict[str, Any]:
        self._check_ids(updates, "StandardsControlAssociationUpdates")
        unprocessed = []
        for update in updates:
            key = (update.get("StandardsArn", ""), update.get("SecurityControlId", ""))
            status, reason = update.get("AssociationStatus"), update.get("UpdatedReason")
            error = None
            if status not in ("ENABLED", "DISABLED"):
                error = ("INVALID_INPUT", f"AssociationStatus must be ENABLED or DISABLED, not {status}")
            elif status == "DISABLED" and not reason:
                error = ("INVALID_INPUT", "UpdatedReason is required to disable a control")
            elif key[0] not in hub.standards or key not in hub.controls:
                error = ("RESOURCE_NOT_FOUND", f"{key[1]} is not a control of an enabled standard {key[0]}")
            if error:
                unprocessed.append({"StandardsControlAssociationUpdate": update, "ErrorCode": error[0],
                                    "ErrorReason": error[1]})
                continue
            state = {"AssociationStatus": str(status), "UpdatedAt": _now()}
            hub.controls[key] = state | ({"UpdatedReason": str(reason)} if reason else {})
        return {"UnprocessedAssociationUpdates": unprocessed}


# ---- the EBS default KMS key ------------------------------------------------------------------

EBS_KEY_OPERATIONS = frozenset({"GetEbsDefaultKmsKeyId", "ModifyEbsDefaultKmsKeyId", "ResetEbsDefaultKmsKeyId"})


def aws_managed_ebs_key(partition: str, region: str, account: str) -> str:
    """What GetEbsDefaultKmsKeyId answers until the default key is changed (or after a reset)."""
    return f"arn:{partition}:kms:{region}:{account}:alias/aws/ebs"


def _customer_kms_key(account: str, region: str, key_id: str) -> str:
    """The key ARN of `key_id` (key id, key ARN, alias name or alias ARN) in the account and region,
    if moto's KMS holds it as a usable symmetric encryption key; else AWS's EC2-style refusal."""
    from moto.kms.models import kms_backends

    partition = partition_of_region(region)
    if key_id.startswith("arn:") and key_id.split(":")[3:5] != [region, account]:
        raise ApiError("InvalidParameterValue", f"KMS key {key_id} is not in this account and Region")
    try:
        key = kms_backends[account][region].describe_key(key_id)
    except Exception:  # moto's NotFoundException / KeyError for an unknown id or alias
        raise ApiError("InvalidParameterValue", f"KMS key {key_id} does not exist") from None
    if key.key_state != "Enabled":
        raise ApiError("InvalidParameterValue", f"KMS key {key_id} is {key.key_state}")
    if key.key_spec != "SYMMETRIC_DEFAULT" or (key.key_usage or "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
        raise ApiError("InvalidParameterValue", "Amazon EBS does not support asymmetric KMS keys")
    arn = str(key.arn)
    return arn if arn.startswith(f"arn:{partition}:") else f"arn:{partition}:" + arn.split(":", 2)[2]


def ebs_default_key_xml(keys: dict[tuple[str, str], str], operation: str, account: str, region: str,
                        params: dict[str, str]) -> bytes:
    """Get/Modify/ResetEbsDefaultKmsKeyId on `keys` ((account, region) -> key ARN, absent: AWS managed)."""
    if params.get("DryRun", "").lower() == "true":
        raise ApiError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412)
    if operation == "ModifyEbsDefaultKmsKeyId":
        if not params.get("KmsKeyId"):
            raise ApiError("MissingParameter", "The request must contain the parameter KmsKeyId")
        keys[(account, region)] = _customer_kms_key(account, region, params["KmsKeyId"])
    elif operation == "ResetEbsDefaultKmsKeyId":
        keys.pop((account, region), None)
    key = keys.get((account, region)) or aws_managed_ebs_key(partition_of_region(region), region, account)
    return (f'<?xml version="1.0" encoding="UTF-8"?><{operation}Response xmlns="http://ec2.amazonaws.com/doc/'
            f"2016-11-15/\"><requestId>{uuid.uuid4()}</requestId><kmsKeyId>{escape(key)}</kmsKeyId>"
            f"</{operation}Response>").encode()


# ---- the strict layer ---------------------------------------------------------------------------

# ---- Organizations: accounts created, moved and closed as AWS does it --------------------------

CLOSURE_WINDOW_SECONDS = 30 * 24 * 3600


class OrganizationsRules:
    """Where moto's Organizations is more lenient than AWS (moto 5.2 creates an account at once,
    with any email, closes any account, the management account included, straight to SUSPENDED,
    and moves an account from any parent):

    - CreateAccount answers IN_PROGRESS; DescribeCreateAccountStatus answers IN_PROGRESS once, then
      SUCCEEDED with the AccountId, or FAILED with FailureReason EMAIL_ALREADY_EXISTS when another
      account (of any organization, or one that left its organization) already has the email;
      the new account has OrganizationAccountAccessRole, trusting the management account;
    - CloseAccount refuses the management account (ConstraintViolationException
      CANNOT_CLOSE_MANAGEMENT_ACCOUNT), an account not ACTIVE (AccountAlreadyClosedException) and
      more closures than AWS's quota (10% of the member accounts, at least 10 and at most 1000, per
      rolling 30 days: CLOSE_ACCOUNT_QUOTA_EXCEEDED); a closed account reads PENDING_CLOSURE once,
      then SUSPENDED (State and the retired Status alike);
    - MoveAccount from a parent the account is not in: SourceParentNotFoundException; to the parent
      it is in: DuplicateAccountException;
    - CreateOrganizationalUnit with a name its parent already has: DuplicateOrganizationalUnitException.
    """

    OPERATIONS = frozenset({"CreateAccount", "DescribeCreateAccountStatus", "CloseAccount", "MoveAccount",
                            "CreateOrganizationalUnit", "RemoveAccountFromOrganization", "DescribeAccount",
                            "ListAccounts", "ListAccountsForParent"})

    def __init__(self) -> None:
        self.failed: dict[str, dict[str, Any]] = {}  # request id -> its FAILED status
        self.pending: dict[str, int] = {}  # request id -> IN_PROGRESS answers still to give
        self.closing: dict[str, int] = {}  # account id -> reads still PENDING_CLOSURE
        self.closed_at: dict[str, list[float]] = {}  # organization id -> closure times
        self.departed: set[str] = set()  # emails of accounts that left their organization (they live on)
        self.created: str | None = None  # the account the last CreateAccount made

    @staticmethod
    def _backend(account: str, partition: str) -> Any:
        from moto.organizations.models import organizations_backends

        return organizations_backends[account][partition]

    @staticmethod
    def _emails() -> set[str]:
        from moto.organizations.models import organizations_backends

        return {a.email.lower() for by_partition in organizations_backends.values()
                for backend in by_partition.values() for a in backend.accounts}

    def handle(self, operation: str, account: str, partition: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """An answer made here, or None to let moto answer (after any state change made here)."""
        backend = self._backend(account, partition)
        if backend.org is None:
            return None  # not a management account: moto's own refusal
        if operation == "CreateAccount":
            return self._create(backend, account, partition, body)
        if operation == "DescribeCreateAccountStatus":
            return self._status(backend, str(body.get("CreateAccountRequestId", "")))
        if operation == "CloseAccount":
            return self._close(backend, str(body.get("AccountId", "")))
        if operation in ("DescribeAccount", "ListAccounts", "ListAccountsForParent"):
            self._settle_closures(backend)
            return None
        if operation == "RemoveAccountFromOrganization":
            member = next((a for a in backend.accounts if a.id == body.get("AccountId")), None)
            if member is not None:
                self.departed.add(member.email.lower())
            return None
        if operation == "MoveAccount":
            member = next((a for a in backend.accounts if a.id == body.get("AccountId")), None)
            if member is not None and member.parent_id != body.get("SourceParentId"):
                raise ApiError("SourceParentNotFoundException",
                               "We can't find a source root or OU with the ParentId that you specified.")
            if member is not None and member.parent_id == body.get("DestinationParentId"):
                raise ApiError("DuplicateAccountException", "That account is already present in the specified "
                               "destination.")
            return None
        if operation == "CreateOrganizationalUnit":
            if any(ou.parent_id == body.get("ParentId") and ou.name == body.get("Name") for ou in backend.ou
                   if getattr(ou, "parent_id", None)):
                raise ApiError("DuplicateOrganizationalUnitException", "An OU with the same name already exists.")
            return None
        return None

    def _create(self, backend: Any, account: str, partition: str, body: dict[str, Any]) -> dict[str, Any]:
        name, email = str(body.get("AccountName", "")), str(body.get("Email", ""))
        now = datetime.now(UTC).timestamp()
        if email.lower() in self._emails() | self.departed:
            request_id = f"car-{uuid.uuid4().hex}"
            self.failed[request_id] = {"Id": request_id, "AccountName": name, "State": "FAILED",
                                       "FailureReason": "EMAIL_ALREADY_EXISTS", "RequestedTimestamp": now,
                                       "CompletedTimestamp": now}
        else:
            status = backend.create_account(**body)["CreateAccountStatus"]
            create_access_role(status["AccountId"], partition, account)
            self.created = status["AccountId"]
            request_id = status["Id"]
            self.pending[request_id] = 1
        return {"CreateAccountStatus": {"Id": request_id, "AccountName": name, "State": "IN_PROGRESS",
                                        "RequestedTimestamp": now}}

    def _status(self, backend: Any, request_id: str) -> dict[str, Any] | None:
        if request_id in self.failed:
            return {"CreateAccountStatus": self.failed[request_id]}
        if self.pending.get(request_id, 0) > 0:
            self.pending[request_id] -= 1
            member = next((a for a in backend.accounts if a.create_account_status_id == request_id), None)
            if member is not None:
                status = dict(member.create_account_status["CreateAccountStatus"])
                for key in ("AccountId", "CompletedTimestamp"):
                    status.pop(key, None)
                return {"CreateAccountStatus": {**status, "State": "IN_PROGRESS"}}
        return None

    def _close(self, backend: Any, account_id: str) -> dict[str, Any] | None:
        org = backend.org
        if account_id == org.master_account_id:
            raise ApiError("ConstraintViolationException", "You can't close the management account.",
                           reason="CANNOT_CLOSE_MANAGEMENT_ACCOUNT")
        member = next((a for a in backend.accounts if a.id == account_id), None)
        if member is None:
            return None  # moto's AccountNotFoundException
        if member.status != "ACTIVE":
            raise ApiError("AccountAlreadyClosedException", "You attempted to close an account that is already "
                           "closed.")
        now = datetime.now(UTC).timestamp()
        recent = [t for t in self.closed_at.get(org.id, []) if now - t < CLOSURE_WINDOW_SECONDS]
        members = sum(1 for a in backend.accounts if a.id != org.master_account_id)
        if len(recent) >= min(1000, max(10, members // 10)):
            raise ApiError("ConstraintViolationException", "You have exceeded close account quota for the past "
                           "30 days.", reason="CLOSE_ACCOUNT_QUOTA_EXCEEDED")
        self.closed_at[org.id] = [*recent, now]
        member.status = member.state = "PENDING_CLOSURE"
        self.closing[account_id] = 1
        return {}

    def _settle_closures(self, backend: Any) -> None:
        """A closure in progress is read once as PENDING_CLOSURE, then it is SUSPENDED."""
        for member in backend.accounts:
            left = self.closing.get(member.id)
            if left is None:
                continue
            if left > 0:
                self.closing[member.id] = left - 1
            else:
                member.status = member.state = "SUSPENDED"
                del self.closing[member.id]

    def resource_arn(self, operation: str, account: str, partition: str, body: dict[str, Any]) -> str | None:
        """The ARN a session policy's Resource is matched against (CloseAccount: the account's)."""
        if operation != "CloseAccount":
            return None
        org = self._backend(account, partition).org
        if org is None:
            return None
        return f"arn:{partition}:organizations::{org.master_account_id}:account/{org.id}/{body.get('AccountId')}"


MANAGEMENT_ROLE = "OrganizationAccountAccessRole"


def _trust_allows(document: str, caller_arn: str, caller_account: str) -> bool:
    """Does a role's trust policy let `caller_arn` call sts:AssumeRole (Conditions not evaluated)?"""
    try:
        statements = json.loads(document).get("Statement", [])
    except ValueError:
        return False
    partition = caller_arn.split(":")[1] if caller_arn.count(":") >= 5 else "aws"
    accepted = {caller_arn, caller_account, f"arn:{partition}:iam::{caller_account}:root", "*"}
    if ":assumed-role/" in caller_arn:  # a role session is trusted through its role's ARN
        role = caller_arn.split(":assumed-role/", 1)[1].split("/")[0]
        accepted.add(f"arn:{partition}:iam::{caller_account}:role/{role}")
    allowed = False
    for st in [statements] if isinstance(statements, dict) else statements:
        principal = st.get("Principal", {})
        principals = principal if isinstance(principal, str) else principal.get("AWS", [])
        principals = [principals] if isinstance(principals, str) else principals
        if not _action_matches(st.get("Action", []), "sts:AssumeRole") or not accepted & set(principals):
            continue
        if st.get("Effect") == "Deny":
            return False
        allowed = allowed or st.get("Effect") == "Allow"
    return allowed


def _role_trust_policy(account: str, partition: str, role_name: str) -> str | None:
    from moto.iam.models import iam_backends

    try:
        role = iam_backends[account][partition].get_role(role_name)
    except Exception:  # moto's NotFoundException
        return None
    return str(role.assume_role_policy_document)


def create_access_role(account: str, partition: str, management_account: str) -> None:
    """What Organizations does for an account it creates: OrganizationAccountAccessRole, trusted by
    the management account, with AdministratorAccess."""
    from moto.iam.models import iam_backends

    backend = iam_backends[account][partition]
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:{partition}:iam::{management_account}:root"},
        "Action": "sts:AssumeRole"}]})
    if any(r.name == MANAGEMENT_ROLE for r in backend.get_roles()):
        return
    backend.create_role(MANAGEMENT_ROLE, trust, "/", None, "Created by AWS Organizations", [], "3600")
    from moto.iam.exceptions import NotFoundException

    with contextlib.suppress(NotFoundException):  # moto knows AWS managed policies in the aws partition only
        backend.attach_role_policy(f"arn:{partition}:iam::aws:policy/AdministratorAccess", MANAGEMENT_ROLE)


@dataclass
class StrictState:
    sessions: dict[str, Session] = field(default_factory=dict)
    default_partition: str | None = None  # of the default credentials: where CreateOrganization was called
    enforce_session_policies: bool = True
    securityhub: SecurityHub = field(default_factory=SecurityHub)
    ebs_default_keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (account, region) -> key ARN
    # AWS propagates a new account's OrganizationAccountAccessRole for a while: AssumeRole into it is
    # refused (AccessDenied) until this many seconds after CreateAccount (account -> time.monotonic()
    # from which its role can be assumed)
    role_propagation_seconds: float = 0.0
    role_ready_at: dict[str, float] = field(default_factory=dict)

    def set_role_propagation(self, seconds: float) -> None:
        """The propagation delay of accounts created from now on; a role still propagating is
        ready within `seconds` from now at the latest (0: every role is ready now)."""
        now = time.monotonic()
        self.role_propagation_seconds = seconds
        self.role_ready_at = {a: min(t, now + seconds) for a, t in self.role_ready_at.items()}
    organizations: OrganizationsRules = field(default_factory=OrganizationsRules)


class StrictAws:
    """WSGI middleware around moto's app; subclasses add `_before` (faults) and `_after` (records)."""

    enforce_by_default = True

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.state = self._new_state()

    def _new_state(self) -> StrictState:
        return StrictState(enforce_session_policies=self.enforce_by_default)

    # hooks ------------------------------------------------------------------------------------

    def _before(self, request: AwsRequest, session: Session | None) -> tuple[str, str, int] | None:
        """An error to answer instead of the request (the tests' faults); None: go on."""
        return None

    def _after(self, request: AwsRequest, session: Session | None, status: int) -> None:
        """Called once per AWS request with the status answered."""

    def _control(self, environ: dict[str, Any], body: bytes, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "no control API here"}']

    # the request path -------------------------------------------------------------------------

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
        error = self._before(request, session)
        resource = self._resource(request, session, body)
        with self.lock:
            error = (error or self._partition_refusal(request, session) or self._denial(request, session, resource)
                     or self._assume_role_refusal(request, session))
        if error:
            return self._answer_error(request, session, error, start_response)
        emulated = self._emulate(request, session, body)
        if emulated is not None:
            status, headers, payload = emulated
            self._after(request, session, status)
            start_response(f"{status} {'OK' if status == 200 else 'Error'}", headers)
            return [payload]
        return self._forward(environ, start_response, request, session)

    def _answer_error(self, request: AwsRequest, session: Session | None, error: tuple[str, str, int],
                      start_response: Callable[..., Any]) -> list[bytes]:
        code, message, status = error
        headers, payload = error_response(request.protocol, code, message, status)
        self._after(request, session, status)
        start_response(f"{status} Error", list(headers.items()))
        return [payload]

    def caller(self, session: Session | None, region: str) -> tuple[str, str]:
        """(ARN, account) of the request's signer: a remembered session, else the default account's user."""
        if session is not None:
            return session.arn, session.account
        return f"arn:{partition_of_region(region)}:iam::{DEFAULT_ACCOUNT}:user/moto", DEFAULT_ACCOUNT

    def _partition_refusal(self, request: AwsRequest, session: Session | None) -> tuple[str, str, int] | None:
        """Credentials of one partition are unknown to every other partition's endpoints."""
        ours = session.role_arn.split(":")[1] if session and session.role_arn.count(":") >= 5 \
            else self.state.default_partition
        if ours is None or partition_of_region(request.region) == ours:
            return None
        code = {"ec2": "AuthFailure", "json": "UnrecognizedClientException",
                "rest-json": "UnrecognizedClientException"}.get(request.protocol, "InvalidClientTokenId")
        return code, "The security token included in the request is invalid.", 403

    def _resource(self, request: AwsRequest, session: Session | None, body: bytes) -> str | None:
        """The ARN of the resource the request acts on, where the session policy check needs it."""
        if request.signing_name != "organizations" or request.operation != "CloseAccount":
            return None
        _, account = self.caller(session, request.region)
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return None
        with self.lock:
            return self.state.organizations.resource_arn(request.operation, account,
                                                         partition_of_region(request.region), data)

    def _denial(self, request: AwsRequest, session: Session | None,
                resource: str | None = None) -> tuple[str, str, int] | None:
        """AWS's refusal when the session policy does not allow every action the request needs,
        with the dependent actions AWS requires of each."""
        if not (self.state.enforce_session_policies and session and session.policy):
            return None
        for required in request.iam_actions:
            if required.lower() == "sts:getcalleridentity":  # AWS never denies it
                continue
            for action in sorted(iamdata.with_dependents({required})):
                verdict = session_policy_verdict(session.policy, action, resource)
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

    def _assume_role_refusal(self, request: AwsRequest, session: Session | None) -> tuple[str, str, int] | None:
        """AssumeRole into a role that does not exist, or does not trust the caller: AccessDenied."""
        if request.operation != "AssumeRole" or request.signing_name != "sts":
            return None
        role_arn = request.params.get("RoleArn", "")
        parts = role_arn.split(":", 5)
        caller_arn, _ = self.caller(session, request.region)
        caller_account = caller_arn.split(":")[4]
        denied = ("AccessDenied", f"User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: "
                  f"{role_arn}", 403)
        if len(parts) < 6 or not parts[5].startswith("role/"):
            return denied
        role_name = parts[5].rpartition("/")[2]
        trust = _role_trust_policy(parts[4], parts[1], role_name)
        if trust is None or not _trust_allows(trust, caller_arn, caller_account):
            return denied
        ready_at = self.state.role_ready_at.get(parts[4])
        if role_name == MANAGEMENT_ROLE and ready_at is not None and time.monotonic() < ready_at:
            return denied  # as AWS answers while the new account's role propagates
        return None

    def _emulate(self, request: AwsRequest, session: Session | None,
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """An answer made here instead of by moto, or None."""
        _, account = self.caller(session, request.region)
        if request.signing_name == "ec2" and request.operation == "DescribeRegions":
            payload = describe_regions_xml(partition_of_region(request.region), request.params)
            return 200, [("Content-Type", "text/xml")], payload
        if request.signing_name == "ec2" and request.operation in EBS_KEY_OPERATIONS:
            try:
                with self.lock:
                    payload = ebs_default_key_xml(self.state.ebs_default_keys, request.operation, account,
                                                  request.region, request.params)
            except ApiError as exc:
                headers, payload = error_response("ec2", exc.code, exc.message, exc.status)
                return exc.status, list(headers.items()), payload
            return 200, [("Content-Type", "text/xml")], payload
        if request.signing_name == "organizations" and request.operation in OrganizationsRules.OPERATIONS:
            try:
                data = json.loads(body) if body else {}
                with self.lock:
                    rules = self.state.organizations
                    answer = rules.handle(request.operation, account, partition_of_region(request.region), data)
                    if rules.created is not None:  # its role propagates from now (set_role_propagation)
                        self.state.role_ready_at[rules.created] = time.monotonic() + self.state.role_propagation_seconds
                        rules.created = None
            except ApiError as exc:
                payload = json.dumps({"__type": exc.code, "Message": exc.message,
                                      **({"Reason": exc.reason} if exc.reason else {})}).encode()
                return exc.status, [("Content-Type", "application/x-amz-json-1.1"),
                                    ("x-amzn-ErrorType", exc.code)], payload
            except ValueError:
                return None
            if answer is not None:
                return 200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(answer).encode()
        if request.signing_name == "securityhub" and request.operation in SecurityHub.OPERATIONS:
            try:
                data = json.loads(body) if body else {}
                with self.lock:
                    answer = self.state.securityhub.handle(request.operation, account, request.region, data)
            except ApiError as exc:
                headers, payload = error_response("rest-json", exc.code, exc.message, exc.status)
                return exc.status, list(headers.items()), payload
            except ValueError:
                headers, payload = error_response("rest-json", "InvalidInputException", "malformed JSON", 400)
                return 400, list(headers.items()), payload
            return 200, [("Content-Type", "application/json")], json.dumps(answer).encode()
        return None

    def _forward(self, environ: dict[str, Any], start_response: Callable[..., Any], request: AwsRequest,
                 session: Session | None) -> Iterable[bytes]:
        status = [0]

        def capture(status_line: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            status[0] = int(status_line.split()[0])
            return start_response(status_line, headers, *exc_info)

        result = self.app(environ, capture)
        if request.operation in ("AssumeRole", "CreateOrganization"):
            payload = b"".join(result)
            getattr(result, "close", lambda: None)()
            if status[0] == 200 and request.operation == "AssumeRole":
                self._remember_session(request, payload)
            if status[0] == 200 and request.operation == "CreateOrganization" and session is None:
                with self.lock:
                    self.state.default_partition = partition_of_region(request.region)
            result = [payload]
        self._after(request, session, status[0])
        return result

    def _remember_session(self, request: AwsRequest, payload: bytes) -> None:
        key = ElementTree.fromstring(payload).find(".//{*}AccessKeyId")
        if key is None or not key.text or not request.target_account:
            return
        p = request.assume_role_params
        session = Session(request.target_account, p["RoleArn"], p["RoleSessionName"], p["SourceIdentity"],
                          p["Policy"], p["DurationSeconds"])
        with self.lock:
            self.state.sessions[key.text] = session


def wrap(app: WSGIApp) -> StrictAws:
    """The sandbox's wrapper (`python -m orgrunner.sandbox.org serve-moto --wrapper \
    orgrunner.sandbox.emulator:wrap`)."""
    return StrictAws(app)
