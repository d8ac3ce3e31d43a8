#!/usr/bin/env python3
"""Validates rendered chart output (multi-document YAML files).

Every object is checked strictly against the Kubernetes OpenAPI schemas
(kubernetes-validate) of each version given; custom resources against the
schemas in the given CRD files; ServiceMonitor against servicemonitor.schema.json.
An object of a kind none of those know fails. On top, checks that
schemas cannot: pods use ServiceAccounts the render defines, bindings name
roles it defines, and no daemon container is privileged or adds a capability
beyond NET_ADMIN and NET_RAW.

usage: validate.py --versions 1.30.0,1.37.0 [--crds FILE]... RENDERED.yaml ...
Prints one line per problem; exits 1 if there is any.
"""
import argparse
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ALLOWED_CAPS = {"NET_ADMIN", "NET_RAW"}
# Containers allowed to be privileged: the gateway's opt-in sysctl writer
# (/proc/sys is read-only otherwise).
PRIVILEGED_OK = {"sysctls"}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def crd_schemas(paths):
    out = {}
    for p in paths:
        for crd in load(p):
            spec = crd["spec"]
            for v in spec["versions"]:
                key = (f'{spec["group"]}/{v["name"]}', spec["names"]["kind"])
                out[key] = v["schema"]["openAPIV3Schema"]
    return out


def pod_spec(obj):
    kind = obj.get("kind")
    if kind in ("Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]
    if kind == "Pod":
        return obj["spec"]
    return None


def name_of(obj):
    return f'{obj.get("kind")}/{obj.get("metadata", {}).get("name")}'


def check_file(path, versions, crds, sm_schema):
    problems = []
    objs = load(path)
    for obj in objs:
        api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        if (api, kind) in crds:
            try:
                jsonschema.validate(obj.get("spec", {}), crds[(api, kind)].get("properties", {}).get("spec", {}))
            except jsonschema.ValidationError as e:
                problems.append(f"{path}: {name_of(obj)}: {e.message}")
            continue
        if (api, kind) == ("monitoring.coreos.com/v1", "ServiceMonitor"):
            try:
                jsonschema.validate(obj, sm_schema)
            except jsonschema.ValidationError as e:
                problems.append(f"{path}: {name_of(obj)}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(obj, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{path}: {name_of(obj)} ({api}): no schema in Kubernetes {v}")
            except kubernetes_validate.ValidationError as e:
                where = ".".join(map(str, e.path))
                problems.append(f"{path}: {name_of(obj)} fails Kubernetes {v} at {where}: {e.message}")
    problems += integrity(path, objs)
    return len(objs), problems


def integrity(path, objs):
    problems = []
    sas = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] == "ServiceAccount"}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
             for o in objs if o["kind"] in ("Role", "ClusterRole")}
    for o in objs:
        ns = o.get("metadata", {}).get("namespace")
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            ref = o["roleRef"]
            want = (ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])
            if want not in roles:
                problems.append(f"{path}: {name_of(o)} binds {ref['kind']} {ref['name']}, which the chart does not define")
            for s in o.get("subjects", []):
                if s["kind"] == "ServiceAccount" and (s.get("namespace"), s["name"]) not in sas:
                    problems.append(f"{path}: {name_of(o)} binds ServiceAccount {s['name']}, which the chart does not define")
        spec = pod_spec(o)
        if spec is None:
            continue
        sa = spec.get("serviceAccountName")
        if not sa or (ns, sa) not in sas:
            problems.append(f"{path}: {name_of(o)} runs as ServiceAccount {sa!r}, which the chart does not define")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            sc = c.get("securityContext") or {}
            if sc.get("privileged") and c["name"] not in PRIVILEGED_OK:
                problems.append(f"{path}: {name_of(o)} container {c['name']} is privileged")
            added = set((sc.get("capabilities") or {}).get("add") or [])
            if c["name"] not in PRIVILEGED_OK and not added <= ALLOWED_CAPS:
                problems.append(f"{path}: {name_of(o)} container {c['name']} adds {sorted(added - ALLOWED_CAPS)}")
            if c["name"] not in PRIVILEGED_OK and "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{path}: {name_of(o)} container {c['name']} does not drop ALL capabilities")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", required=True)
    ap.add_argument("--crds", action="append", default=[])
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    versions = a.versions.split(",")
    known = kubernetes_validate.utils.all_versions()
    for v in versions:
        if kubernetes_validate.utils.major_minor(v) not in map(kubernetes_validate.utils.major_minor, known):
            print(f"kubernetes-validate has no schemas for Kubernetes {v} (it has {known[0]} to {known[-1]})")
            return 1
    crds = crd_schemas(a.crds)
    with open(os.path.join(HERE, "servicemonitor.schema.json")) as f:
        sm_schema = json.load(f)
    total, failed = 0, 0
    for path in a.files:
        n, problems = check_file(path, versions, crds, sm_schema)
        total += n
        for p in problems:
            print(p)
        failed += len(problems)
    print(f"validated {total} objects against Kubernetes {' and '.join(versions)}: {failed} problem(s)",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
