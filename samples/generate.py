#!/usr/bin/env python3
"""Generates the bundled sample data set (samples/activity-logs/*.ndjson).

Twelve days (2025-03-01 .. 2025-03-12) of Azure Activity Log records for two
subscriptions, as Event Hubs bodies ({"records":[...]}, one body per line),
in the shape a diagnostic setting exports: uppercase operationName and
resourceId, `time` with 7 fraction digits, Start/Accept/Success/Failure
records sharing a correlationId.

Background activity (VM power actions, storage, network, deployments, role
assignments) is random but seeded, and never touches VM extensions. Every
VM / scale-set extension operation is scheduled by hand in EXTENSION_OPS
below, so which records alert can be stated exactly: see EXPECTED.md. This
script recomputes the expected alerts with a small reference implementation
of the New Terms semantics and fails if they differ from EXPECTED.md.

Usage:
    python3 samples/generate.py                 # rewrite the samples, check EXPECTED.md
    python3 samples/generate.py --extract-asn DIR
        # rewrite samples/asn/*.csv from a full ip-location-db CSV directory
        # (scripts/fetch-asn-db.sh installs one in data/asn/)

Only the Python standard library is needed.
"""

import argparse
import datetime as dt
import ipaddress
import json
import os
import random
import re
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "activity-logs")
ASN_DIR = os.path.join(HERE, "asn")
SEED = 20250301
FIRST_DAY = dt.date(2025, 3, 1)
DAYS = 12
WINDOW = dt.timedelta(days=7)
LEARN_UNTIL = dt.datetime(2025, 3, 8, tzinfo=dt.timezone.utc)  # detect mode

SUB_A = "00000000-0000-0000-0000-00000000000a"  # production
SUB_B = "00000000-0000-0000-0000-00000000000b"  # build / dev
TENANT = "00000000-0000-0000-0000-0000000000f0"

# Caller networks. Every public address is in the real ip-location-db data
# and resolves to the AS noted here (checked by the enrich tests in Rust
# against samples/asn/ and by --extract-asn against the full data set).
NETWORKS = {
    "corp_hq": ("12.1.20.45", 7018, "AT&T: Contoso HQ internet egress"),
    "corp_zscaler": ("136.226.23.17", 62044, "Zscaler: remote staff via the corporate proxy"),
    "admin_home_v6": ("2003:1a0:4c2f:7b00:1d5e:9a41:2c7:11", 3320, "Deutsche Telekom: on-call admin at home (IPv6)"),
    "ci_runner": ("3.1.112.40", 16509, "Amazon: self-hosted CI runners"),
    "ci_runner_2": ("3.1.112.41", 16509, "Amazon: self-hosted CI runners"),
    "gh_hosted": ("4.210.33.7", 8075, "Microsoft: GitHub-hosted runners in Azure"),
    "azure_policy": ("20.13.97.214", 8075, "Microsoft: Azure Policy / guest configuration"),
    "defender": ("13.107.9.20", 8068, "Microsoft: Defender for Cloud onboarding"),
    "portal_backend": ("13.69.233.10", 8075, "Microsoft: ARM on behalf of a Microsoft service"),
    "attacker_do": ("167.99.148.23", 14061, "DigitalOcean: attacker VPS"),
    "attacker_m247": ("185.206.225.67", 9009, "M247: attacker VPN exit"),
    # Not public: these must miss (private) or never reach a lookup (not an IP).
    "private": ("10.20.30.40", None, "private address (VNet / private link): lookup miss"),
    "not_an_ip": ("jumpbox-01.corp.example.com", None, "not an IP literal: source.address"),
}

MICROSOFT_ASNS = {3598, 8068, 8069, 8070, 8071, 8072, 8073, 8074, 8075, 12076}

PRINCIPALS = {
    "alice": ("user", "alice.admin@example.com", "Alice Admin", "Owner"),
    "bob": ("user", "bob.ops@example.com", "Bob Ops", "Contributor"),
    "carol": ("user", "carol.oncall@example.com", "Carol Oncall", "Virtual Machine Contributor"),
    "dave": ("user", "dave.dev@example.com", "Dave Dev", "Contributor"),
    "ci": ("sp", "ci-deployer", "ci-deployer", "Contributor"),
    "gh": ("sp", "github-actions-agents", "github-actions-agents", "Contributor"),
    "policy": ("sp", "Azure Policy", "Azure Policy", "Virtual Machine Contributor"),
    "defender": ("sp", "Microsoft Defender for Cloud", "Microsoft Defender for Cloud", "Security Admin"),
}

# Resources: (subscription, resource group, provider path below PROVIDERS/).
VMS = {
    "VM-WEB-01": (SUB_A, "RG-WEB-PROD"),
    "VM-WEB-02": (SUB_A, "RG-WEB-PROD"),
    "VM-WEB-03": (SUB_A, "RG-WEB-PROD"),
    "VM-WEB-04": (SUB_A, "RG-WEB-PROD"),  # created 2025-03-10 by CI
    "VM-SQL-01": (SUB_A, "RG-DATA-PROD"),
    "VM-BUILD-01": (SUB_B, "RG-BUILD"),
    "VM-DEV-01": (SUB_B, "RG-DEV"),
}
VMSS = {
    "VMSS-API": (SUB_A, "RG-API-PROD"),
    "VMSS-AGENTS": (SUB_B, "RG-BUILD"),
}

LOCATION = "westeurope"


def t(day, hh, mm, ss=0):
    return dt.datetime(2025, 3, day, hh, mm, ss, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------------------
# Hand-scheduled extension operations.
# (time, target, extension, action, network, principal, result)
# target is a VM or scale-set name; action WRITE or DELETE; result Success or
# Failure. Start (and, for writes, Accept) records are added automatically
# a few seconds before the final record, with the same correlationId.

def weekdays():
    for d in range(1, DAYS + 1):
        if dt.date(2025, 3, d).weekday() < 5:
            yield d


EXTENSION_OPS = []


def ext(when, target, extension, action, network, principal, result="Success"):
    EXTENSION_OPS.append((when, target, extension, action, network, principal, result))


# Corporate administration from the HQ network and the Zscaler proxy.
ext(t(1, 9, 12), "VM-WEB-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_hq", "alice")
ext(t(5, 14, 30), "VM-WEB-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_hq", "alice")
ext(t(9, 10, 5), "VM-WEB-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_hq", "alice")
ext(t(3, 11, 20), "VM-WEB-02", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_zscaler", "bob")
ext(t(7, 16, 45), "VM-WEB-02", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_zscaler", "bob")
ext(t(11, 9, 30), "VM-WEB-02", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_zscaler", "bob")
ext(t(2, 13, 0), "VM-SQL-01", "SQLIAASEXTENSION", "WRITE", "corp_hq", "alice")
ext(t(11, 15, 10), "VM-SQL-01", "SQLIAASEXTENSION", "WRITE", "corp_hq", "alice")
ext(t(2, 16, 40), "VM-DEV-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_hq", "dave")
ext(t(6, 11, 5), "VM-DEV-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "corp_hq", "dave")
ext(t(5, 10, 20), "VM-BUILD-01", "CUSTOMSCRIPTEXTENSION", "DELETE", "corp_zscaler", "bob")
# A failed attempt from the HQ network never becomes history.
ext(t(4, 8, 55), "VM-DEV-01", "AADSSHLOGINFORLINUX", "WRITE", "corp_hq", "dave", "Failure")
# On-call admin from home over IPv6.
ext(t(4, 21, 30), "VM-WEB-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "admin_home_v6", "carol")
ext(t(9, 22, 10), "VM-WEB-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "admin_home_v6", "carol")
# From a private address (private endpoint / VNet-integrated runner): miss.
ext(t(6, 14, 2), "VM-SQL-01", "SQLIAASEXTENSION", "WRITE", "private", "alice")
# Caller that is not an IP literal: source.address, no ASN.
ext(t(8, 12, 44), "VM-WEB-02", "CUSTOMSCRIPTEXTENSION", "WRITE", "not_an_ip", "bob")

# CI: self-hosted runners on AWS deploy every weekday.
for d in weekdays():
    ext(t(d, 6, 30), "VMSS-API", "CUSTOMSCRIPT", "WRITE", "ci_runner", "ci")
    ext(t(d, 7, 5), "VMSS-AGENTS", "CUSTOMSCRIPT", "WRITE", "ci_runner_2", "ci")
for d in (3, 6, 10):
    ext(t(d, 7, 40), "VM-BUILD-01", "DOCKEREXTENSION", "WRITE", "ci_runner", "ci")
# CI provisions a new VM on Monday 2025-03-10 and configures it.
ext(t(10, 8, 40), "VM-WEB-04", "CUSTOMSCRIPTEXTENSION", "WRITE", "ci_runner", "ci")
# GitHub-hosted runners (Azure address space): excluded as Microsoft.
for d in (3, 5, 7, 10, 12):
    ext(t(d, 12, 15), "VMSS-AGENTS", "CUSTOMSCRIPT", "WRITE", "gh_hosted", "gh")

# Microsoft automation: Azure Policy keeps agents installed on every VM,
# Defender onboards endpoint protection; all from Microsoft ASNs.
for d in range(1, DAYS + 1):
    for i, vm in enumerate(sorted(VMS)):
        if vm == "VM-WEB-04" and d < 10:
            continue
        ext(t(d, 3, 10 + i * 3), vm, "AZUREPOLICYFORLINUX", "WRITE", "azure_policy", "policy")
        if d % 3 == 1:
            ext(t(d, 3, 11 + i * 3), vm, "AZUREMONITORLINUXAGENT", "WRITE", "azure_policy", "policy")
for i, vm in enumerate(sorted(VMS)):
    if vm != "VM-WEB-04":
        ext(t(4, 4, 20 + i * 2), vm, "MDE.LINUX", "WRITE", "defender", "defender")
ext(t(10, 9, 30), "VM-WEB-04", "MDE.LINUX", "WRITE", "defender", "defender")
ext(t(6, 17, 20), "VMSS-API", "MICROSOFTMONITORINGAGENT", "DELETE", "portal_backend", "policy")

# The attack: bob's token is replayed from a DigitalOcean VPS at night,
# later from an M247 VPN exit.
ext(t(10, 2, 14), "VM-WEB-02", "CUSTOMSCRIPTEXTENSION", "WRITE", "attacker_do", "bob")
ext(t(10, 2, 16), "VM-SQL-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "attacker_do", "bob", "Failure")
ext(t(10, 2, 19), "VM-WEB-03", "RUNCOMMANDLINUX", "WRITE", "attacker_do", "bob")
ext(t(10, 2, 25), "VM-WEB-02", "CUSTOMSCRIPTEXTENSION", "WRITE", "attacker_do", "bob")
ext(t(11, 3, 5), "VM-WEB-02", "CUSTOMSCRIPTEXTENSION", "DELETE", "attacker_do", "bob")
ext(t(12, 1, 40), "VMSS-API", "CUSTOMSCRIPT", "WRITE", "attacker_m247", "bob")
ext(t(12, 1, 42), "VM-WEB-01", "CUSTOMSCRIPTEXTENSION", "WRITE", "attacker_m247", "bob")

# Attacker activity outside this rule's query (other rules' business).
OTHER_ATTACK_OPS = [
    (t(10, 2, 18), SUB_A, "RG-WEB-PROD", "MICROSOFT.COMPUTE/VIRTUALMACHINES/VM-WEB-03",
     "MICROSOFT.COMPUTE/VIRTUALMACHINES/RUNCOMMAND/ACTION", "attacker_do", "bob"),
    (t(12, 1, 38), SUB_A, "RG-API-PROD",
     "MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/0d3c1a77-0000-4000-8000-00000000b0b0",
     "MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/WRITE", "attacker_m247", "bob"),
]


# ---------------------------------------------------------------------------
# Record construction

class Gen:
    def __init__(self, seed):
        self.rng = random.Random(seed)

    def guid(self):
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def principal_id(self, name):
        # Stable per principal, derived from the name (not from the RNG).
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, name + ".principals.example.com"))

    def time_str(self, when):
        # 7 fraction digits, as Event Hubs exports them.
        ticks = self.rng.randrange(10_000_000)
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ticks:07d}Z"

    def identity(self, principal, action, scope):
        kind, name, display, role = PRINCIPALS[principal]
        pid = self.principal_id(principal)
        claims = {
            "aud": "https://management.core.windows.net/",
            "iss": f"https://sts.windows.net/{TENANT}/",
            "http://schemas.microsoft.com/identity/claims/objectidentifier": pid,
            "http://schemas.microsoft.com/identity/claims/tenantid": TENANT,
            "ver": "1.0",
        }
        if kind == "user":
            given, family = display.split(" ", 1)
            claims.update({
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": name,
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name": name,
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname": given,
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname": family,
                "name": display,
                "appid": "c44b4083-3bb0-49c1-b47d-974e53cbdf3c",  # Azure portal
                "http://schemas.microsoft.com/claims/authnmethodsreferences": "pwd,mfa",
            })
        else:
            claims.update({
                "appid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name + ".apps.example.com")),
                "appidacr": "2",
                "http://schemas.microsoft.com/identity/claims/identityprovider": f"https://sts.windows.net/{TENANT}/",
                "idtyp": "app",
            })
        return {
            "authorization": {
                "action": action,
                "scope": scope,
                "evidence": {
                    "role": role,
                    "roleAssignmentScope": f"/subscriptions/{scope.split('/')[2]}",
                    "roleAssignmentId": uuid.uuid5(uuid.NAMESPACE_DNS, principal + role).hex,
                    "roleDefinitionId": uuid.uuid5(uuid.NAMESPACE_DNS, role).hex,
                    "principalId": pid.replace("-", ""),
                    "principalType": "User" if kind == "user" else "ServicePrincipal",
                },
            },
            "claims": claims,
        }

    def records(self, when, sub, rg, resource_path, op, network, principal, result,
                long_running=False, status_ok="OK"):
        """One ARM operation: Start [, Accept], then Success or Failure."""
        caller = NETWORKS[network][0]
        corr = self.guid()
        # Exported upper-case, except the subscription GUID (as in Elastic's
        # pipeline fixtures).
        rid = f"/SUBSCRIPTIONS/{sub}/RESOURCEGROUPS/{rg}/PROVIDERS/{resource_path}".upper()
        rid = rid.replace(sub.upper(), sub)
        scope = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{resource_path}"
        # RBAC action as ARM spells it: "Microsoft.Compute/virtualmachines/...".
        ns, rest = op.split("/", 1)
        action = "Microsoft." + ns.split(".", 1)[1].title() + "/" + rest.lower()
        ident = self.identity(principal, action, scope)
        level = "Information"
        steps = [("Start", "Started.", None, -self.rng.randint(4, 20))]
        if result == "Success":
            if long_running:
                steps.append(("Accept", "Accepted.Created", "Created", -self.rng.randint(1, 3)))
            sig_code = "Created" if op.endswith("/WRITE") and long_running else status_ok
            steps.append(("Success", f"Succeeded.{sig_code}", sig_code, 0))
        else:
            steps.append(("Failure", "Failed.Forbidden", "Forbidden", 0))
            level = "Error"
        out = []
        for rtype, sig, status, offset in steps:
            ts = when + dt.timedelta(seconds=offset)
            props = {
                "eventCategory": "Administrative",
                "entity": rid,
                "message": action,
                "hierarchy": f"{TENANT}/{sub}",
            }
            if status:
                props["statusCode"] = status
                props["serviceRequestId"] = self.guid()
            if rtype == "Failure":
                props["statusMessage"] = json.dumps({"error": {
                    "code": "AuthorizationFailed",
                    "message": f"The client '{PRINCIPALS[principal][1]}' does not have authorization to perform action '{action}' over scope '{scope}'.",
                }})
            rec = {
                "time": self.time_str(ts),
                "resourceId": rid,
                "operationName": op,
                "category": "Administrative",
                "resultType": rtype,
                "resultSignature": sig,
                "durationMs": 0 if rtype == "Start" else self.rng.randint(40, 90000),
                "callerIpAddress": caller,
                "correlationId": corr,
                "identity": ident,
                "level": level if rtype != "Start" else "Information",
                "location": LOCATION,
                "properties": props,
                "tenantId": TENANT,
            }
            out.append((ts, rec))
        return out


def extension_records(gen):
    out = []
    for when, target, extension, action, network, principal, result in EXTENSION_OPS:
        if target in VMS:
            sub, rg = VMS[target]
            kind = "VIRTUALMACHINES"
        else:
            sub, rg = VMSS[target]
            kind = "VIRTUALMACHINESCALESETS"
        path = f"MICROSOFT.COMPUTE/{kind}/{target}/EXTENSIONS/{extension}"
        op = f"MICROSOFT.COMPUTE/{kind}/EXTENSIONS/{action}"
        out += gen.records(when, sub, rg, path, op, network, principal, result,
                           long_running=(action == "WRITE"))
    for when, sub, rg, path, op, network, principal in OTHER_ATTACK_OPS:
        out += gen.records(when, sub, rg, path, op, network, principal, "Success")
    return out


# Background operations: (operation, resource path template, long running, status).
BACKGROUND = [
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/START/ACTION", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", True, "OK"),
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/RESTART/ACTION", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", True, "OK"),
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/DEALLOCATE/ACTION", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", True, "OK"),
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/WRITE", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", True, "OK"),
    ("MICROSOFT.COMPUTE/DISKS/WRITE", "MICROSOFT.COMPUTE/DISKS/{vm}-OSDISK", False, "OK"),
    ("MICROSOFT.COMPUTE/SNAPSHOTS/WRITE", "MICROSOFT.COMPUTE/SNAPSHOTS/{vm}-SNAP", True, "Created"),
    ("MICROSOFT.STORAGE/STORAGEACCOUNTS/WRITE", "MICROSOFT.STORAGE/STORAGEACCOUNTS/{sa}", False, "OK"),
    ("MICROSOFT.STORAGE/STORAGEACCOUNTS/LISTKEYS/ACTION", "MICROSOFT.STORAGE/STORAGEACCOUNTS/{sa}", False, "OK"),
    ("MICROSOFT.STORAGE/STORAGEACCOUNTS/BLOBSERVICES/CONTAINERS/WRITE", "MICROSOFT.STORAGE/STORAGEACCOUNTS/{sa}/BLOBSERVICES/DEFAULT/CONTAINERS/ARTIFACTS", False, "OK"),
    ("MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/WRITE", "MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/{nsg}", True, "OK"),
    ("MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/SECURITYRULES/WRITE", "MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/{nsg}/SECURITYRULES/ALLOW-HTTPS", True, "Created"),
    ("MICROSOFT.NETWORK/PUBLICIPADDRESSES/WRITE", "MICROSOFT.NETWORK/PUBLICIPADDRESSES/{vm}-PIP", True, "OK"),
    ("MICROSOFT.NETWORK/NETWORKINTERFACES/WRITE", "MICROSOFT.NETWORK/NETWORKINTERFACES/{vm}-NIC", False, "OK"),
    ("MICROSOFT.RESOURCES/DEPLOYMENTS/WRITE", "MICROSOFT.RESOURCES/DEPLOYMENTS/{deploy}", True, "Created"),
    ("MICROSOFT.RESOURCES/DEPLOYMENTS/VALIDATE/ACTION", "MICROSOFT.RESOURCES/DEPLOYMENTS/{deploy}", False, "OK"),
    ("MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/WRITE", "MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/{ra}", False, "Created"),
    ("MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/DELETE", "MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/{ra}", False, "OK"),
    ("MICROSOFT.KEYVAULT/VAULTS/WRITE", "MICROSOFT.KEYVAULT/VAULTS/{kv}", False, "OK"),
    ("MICROSOFT.INSIGHTS/DIAGNOSTICSETTINGS/WRITE", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}/PROVIDERS/MICROSOFT.INSIGHTS/DIAGNOSTICSETTINGS/TO-EVENTHUB", False, "OK"),
]
BACKGROUND_WEIGHTS = [6, 5, 4, 3, 3, 2, 2, 3, 2, 2, 2, 1, 2, 6, 3, 2, 1, 1, 1]

BACKGROUND_ACTORS = [
    # (network, principal, weight)
    ("corp_hq", "alice", 5), ("corp_hq", "dave", 5), ("corp_zscaler", "bob", 4),
    ("admin_home_v6", "carol", 2), ("ci_runner", "ci", 6), ("ci_runner_2", "ci", 2),
    ("azure_policy", "policy", 2), ("gh_hosted", "gh", 2), ("private", "alice", 1),
]


def background_records(gen):
    out = []
    vms_by_sub = {s: [vm for vm, (vs, _) in VMS.items() if vs == s and vm != "VM-WEB-04"] for s in (SUB_A, SUB_B)}
    rgs = {vm: rg for vm, (_, rg) in VMS.items()}
    for d in range(1, DAYS + 1):
        day = dt.date(2025, 3, d)
        weekend = day.weekday() >= 5
        for sub in (SUB_A, SUB_B):
            count = gen.rng.randint(8, 12) if weekend else gen.rng.randint(24, 32)
            for _ in range(count):
                op, tmpl, long_running, status = gen.rng.choices(BACKGROUND, BACKGROUND_WEIGHTS)[0]
                network, principal, _ = gen.rng.choices(BACKGROUND_ACTORS, [a[2] for a in BACKGROUND_ACTORS])[0]
                vm = gen.rng.choice(vms_by_sub[sub])
                rg = rgs[vm]
                path = tmpl.format(
                    vm=vm,
                    sa=("STPRODWEB01" if sub == SUB_A else "STBUILDCACHE01"),
                    nsg=f"{vm}-NSG",
                    deploy=f"{'web' if sub == SUB_A else 'build'}-release-{d:02d}{gen.rng.randint(0, 99):02d}".upper(),
                    ra=gen.guid(),
                    kv=("KV-PROD-SECRETS" if sub == SUB_A else "KV-BUILD"),
                )
                # Working hours for people, any time for automation.
                if PRINCIPALS[principal][0] == "user":
                    hh = gen.rng.randint(7, 19)
                else:
                    hh = gen.rng.randint(0, 23)
                when = dt.datetime(2025, 3, d, hh, gen.rng.randint(0, 59), gen.rng.randint(0, 59),
                                   tzinfo=dt.timezone.utc)
                result = "Failure" if gen.rng.random() < 0.04 else "Success"
                out += gen.records(when, sub, rg, path, op, network, principal, result,
                                   long_running=long_running, status_ok=status)
    return out


def write_days(all_records, gen):
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in os.listdir(OUT_DIR):
        if name.endswith(".ndjson"):
            os.remove(os.path.join(OUT_DIR, name))
    all_records.sort(key=lambda r: (r[0], r[1]["time"]))
    by_day = {}
    for ts, rec in all_records:
        by_day.setdefault(ts.date(), []).append(rec)
    total = 0
    for day, recs in sorted(by_day.items()):
        path = os.path.join(OUT_DIR, f"{day.isoformat()}.ndjson")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            i = 0
            while i < len(recs):
                # Event Hubs batches a variable number of records per body.
                n = gen.rng.randint(1, 12)
                body = {"records": recs[i:i + n]}
                f.write(json.dumps(body, separators=(",", ":")) + "\n")
                i += n
        total += len(recs)
    return total


# ---------------------------------------------------------------------------
# ASN data and the reference New Terms computation

def load_asn_csv(paths):
    ranges = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            import csv
            for row in csv.reader(f):
                if not row:
                    continue
                start, end = ipaddress.ip_address(row[0]), ipaddress.ip_address(row[1])
                ranges.append((start.version, int(start), int(end), int(row[2]), row[3] if len(row) > 3 else ""))
    return ranges


def lookup(ranges, ip):
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for version, start, end, asn, _ in ranges:
        if version == addr.version and start <= int(addr) <= end:
            return asn
    return None


RULE_ACTIONS = {
    f"MICROSOFT.COMPUTE/{k}/EXTENSIONS/{a}"
    for k in ("VIRTUALMACHINES", "VIRTUALMACHINESCALESETS")
    for a in ("DELETE", "READ", "WRITE")
}
NAME_RE = re.compile(r"/PROVIDERS/MICROSOFT\.COMPUTE/(?:VIRTUALMACHINES|VIRTUALMACHINESCALESETS)/(.+)$", re.I)


def parse_time(s):
    # Truncate to milliseconds, as @timestamp is.
    base, frac = s[:-1].split(".")
    return dt.datetime.fromisoformat(base + "." + frac[:3] + "+00:00")


def reference_alerts(ranges, learn_until=None):
    """New iff no matching record with the same (lower(name), asn) in [t-W, t)."""
    matched = []
    for name in sorted(os.listdir(OUT_DIR)):
        with open(os.path.join(OUT_DIR, name), encoding="utf-8") as f:
            for line in f:
                for rec in json.loads(line)["records"]:
                    if rec["operationName"].upper() not in RULE_ACTIONS:
                        continue
                    if rec["resultType"].lower() != "success":
                        continue
                    m = NAME_RE.search(rec["resourceId"])
                    asn = lookup(ranges, rec["callerIpAddress"])
                    if not m or asn is None or asn in MICROSOFT_ASNS:
                        continue
                    matched.append((parse_time(rec["time"]), m.group(1), asn))
    matched.sort()
    last_seen, alerts = {}, []
    for ts, name, asn in matched:
        key = (name.lower(), asn)
        prev = last_seen.get(key)
        if (prev is None or prev < ts - WINDOW) and (learn_until is None or ts >= learn_until):
            alerts.append((ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", name, asn))
        last_seen[key] = max(prev, ts) if prev else ts
    return alerts


def expected_from_markdown():
    """Parses the two alert tables of EXPECTED.md: rows `| n | time | name | asn | ...`."""
    tables, current = {}, None
    with open(os.path.join(HERE, "EXPECTED.md"), encoding="utf-8") as f:
        for line in f:
            h = re.match(r"^## (Full replay|Learn, then detect)", line)
            if h:
                current = tables.setdefault(h.group(1), [])
                continue
            if line.startswith("## "):
                current = None
            row = re.match(r"^\|\s*\d+\s*\|\s*(2025-03-\d\d \d\d:\d\d)\s*\|\s*`([^`]+)`\s*\|\s*(\d+)", line)
            if row and current is not None:
                current.append((row.group(1), row.group(2), int(row.group(3))))
    return tables


def check_expected(ranges):
    tables = expected_from_markdown()
    ok = True
    for title, learn in (("Full replay", None), ("Learn, then detect", LEARN_UNTIL)):
        computed = [(ts[:16].replace("T", " "), name, asn) for ts, name, asn in reference_alerts(ranges, learn)]
        if computed != tables.get(title):
            ok = False
            print(f"EXPECTED.md '{title}' differs from the reference computation:", file=sys.stderr)
            for row in computed:
                print(f"  computed {row}", file=sys.stderr)
            for row in tables.get(title, []):
                print(f"  expected {row}", file=sys.stderr)
        else:
            print(f"{title}: {len(computed)} alerts, as EXPECTED.md states")
    return ok


def extract_asn(source_dir):
    """Copies, from the full data set, the range lines covering the sample IPs."""
    wanted = {n: ip for n, (ip, asn, _) in NETWORKS.items() if asn is not None}
    os.makedirs(ASN_DIR, exist_ok=True)
    for fname, version in (("asn-ipv4.csv", 4), ("asn-ipv6.csv", 6)):
        lines = []
        with open(os.path.join(source_dir, fname), encoding="utf-8") as f:
            import csv
            for line in f:
                row = next(csv.reader([line]))
                start, end = int(ipaddress.ip_address(row[0])), int(ipaddress.ip_address(row[1]))
                for ip in wanted.values():
                    a = ipaddress.ip_address(ip)
                    if a.version == version and start <= int(a) <= end:
                        lines.append(line)
                        break
        with open(os.path.join(ASN_DIR, fname), "w", encoding="utf-8", newline="\n") as out:
            out.writelines(lines)
    ranges = load_asn_csv([os.path.join(ASN_DIR, f) for f in ("asn-ipv4.csv", "asn-ipv6.csv")])
    bad = [(n, ip, NETWORKS[n][1], lookup(ranges, ip)) for n, ip in wanted.items()
           if lookup(ranges, ip) != NETWORKS[n][1]]
    if bad:
        sys.exit(f"sample IPs that do not resolve as intended: {bad}")
    print(f"wrote {ASN_DIR}: every sample IP resolves to its intended AS")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extract-asn", metavar="DIR", help="ip-location-db CSV directory to extract from")
    args = ap.parse_args()
    if args.extract_asn:
        extract_asn(args.extract_asn)
        return
    gen = Gen(SEED)
    records = extension_records(gen) + background_records(gen)
    total = write_days(records, gen)
    print(f"wrote {total} records to {OUT_DIR}")
    ranges = load_asn_csv([os.path.join(ASN_DIR, f) for f in ("asn-ipv4.csv", "asn-ipv6.csv")])
    if not check_expected(ranges):
        sys.exit(1)


if __name__ == "__main__":
    main()
