#!/usr/bin/env bash
# The chart tests: lint, render, schema-validate, bad values, CRD drift.
#
#   helm/test.sh          (CAUSEWAY_BIN=path/to/causeway to pick the binary)
#
# Installs its tools with scripts/k8s-tools.sh (target/k8s-tools/), then for
# both charts: `helm lint --strict` and `helm template` with the default values
# (broker chart) and every helm/causeway/ci/*.yaml, with Helm 4 and Helm 3
# (which must render the same objects); every rendered object is
# validated strictly against the Kubernetes schemas of the oldest and newest
# versions docs/install.md supports (helm/test/validate.py); every
# helm/causeway/ci/bad/*.yaml must fail with the message on its
# `# expect: ...` line (under Helm 3, its `# expect-helm3: ...` line if it
# has one); the CoreDNS Jobs' scripts must add, replace and remove their
# block (helm/test/hooks.py); and each chart's crds/ must equal `causeway
# crdgen`.
# Exits non-zero on any failure; prints a summary.
set -uo pipefail
cd "$(dirname "$0")/.."

# Oldest and newest supported Kubernetes (docs/install.md says the same).
OLDEST=1.30.0
NEWEST=1.37.0

scripts/k8s-tools.sh || exit 1
HELM=target/k8s-tools/bin/helm
HELM3=target/k8s-tools/bin/helm3
PY=target/k8s-tools/venv/bin/python
BIN=${CAUSEWAY_BIN:-target/debug/causeway}
OUT=target/helm-test
rm -rf "$OUT" && mkdir -p "$OUT"

passed=0
failed=0
failures=()
ok() { passed=$((passed + 1)); }
bad() {
  failed=$((failed + 1))
  failures+=("$1")
  echo "FAIL: $1" >&2
  [ -n "${2:-}" ] && sed 's/^/    /' "$2" | head -20 >&2
  return 0
}

# lint_and_render CHART NAME [VALUES]: lint --strict, render for both
# Kubernetes versions with Helm 4; Helm 3 must lint it and render the same.
rendered=()
lint_and_render() {
  local chart=$1 name=$2 values=${3:-} args=()
  [ -n "$values" ] && args=(-f "$values")
  if "$HELM" lint --strict "$chart" "${args[@]}" >"$OUT/$name.lint" 2>&1; then ok; else
    bad "helm lint --strict $chart ${values:-(defaults)}" "$OUT/$name.lint"
  fi
  if "$HELM3" lint --strict "$chart" "${args[@]}" >"$OUT/$name.lint3" 2>&1; then ok; else
    bad "helm3 lint --strict $chart ${values:-(defaults)}" "$OUT/$name.lint3"
  fi
  local v
  for v in "$OLDEST" "$NEWEST"; do
    local f="$OUT/$name-$v.yaml"
    if "$HELM" template causeway "$chart" --namespace causeway --kube-version "$v" "${args[@]}" \
      >"$f" 2>"$OUT/$name-$v.err"; then
      ok
      rendered+=("$f")
    else
      bad "helm template $chart ${values:-(defaults)} --kube-version $v" "$OUT/$name-$v.err"
    fi
    if "$HELM3" template causeway "$chart" --namespace causeway --kube-version "$v" "${args[@]}" \
      >"$f.helm3" 2>"$OUT/$name-$v.err3"; then
      if diff -u "$f" "$f.helm3" >"$OUT/$name-$v.helm3.diff"; then ok; else
        bad "helm3 template $chart ${values:-(defaults)} --kube-version $v renders other objects than Helm 4" "$OUT/$name-$v.helm3.diff"
      fi
    else
      bad "helm3 template $chart ${values:-(defaults)} --kube-version $v" "$OUT/$name-$v.err3"
    fi
  done
}

# The broker chart: defaults, and without the namespace and policy.
lint_and_render helm/causeway-broker broker
printf 'namespace:\n  name: brokers\n  create: false\nadmissionPolicy:\n  enabled: false\n' >"$OUT/broker-minimal.values"
lint_and_render helm/causeway-broker broker-minimal "$OUT/broker-minimal.values"

# The cluster chart: every realistic values file.
for values in helm/causeway/ci/*.yaml; do
  lint_and_render helm/causeway "causeway-$(basename "$values" .yaml)" "$values"
done

# Every rendered object, against both Kubernetes versions' schemas.
if [ ${#rendered[@]} -gt 0 ]; then
  if "$PY" helm/test/validate.py --versions "$OLDEST,$NEWEST" \
    --crds helm/causeway/crds/causeway-crds.yaml "${rendered[@]}" >"$OUT/validate.log" 2>&1; then
    ok
  else
    bad "schema validation of the rendered charts" "$OUT/validate.log"
  fi
  validated=$(tail -n1 "$OUT/validate.log")
fi

# Bad values: each must fail with its expected message.
for values in helm/causeway/ci/bad/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$values" | head -n1)
  if [ -z "$expect" ]; then
    bad "$values has no '# expect: ...' line"
    continue
  fi
  # Helm 3 words schema errors its own way: `# expect-helm3: ...` then.
  expect3=$(sed -n 's/^# expect-helm3: //p' "$values" | head -n1)
  for helm in "$HELM" "$HELM3"; do
    [ "$helm" = "$HELM3" ] && [ -n "$expect3" ] && expect=$expect3
    log="$OUT/bad-$(basename "$values" .yaml)-$(basename "$helm").log"
    if "$helm" template causeway helm/causeway --namespace causeway -f "$values" >"$log" 2>&1; then
      bad "$values rendered with $(basename "$helm"), but should fail with: $expect"
    elif grep -qF -- "$expect" "$log"; then
      ok
    else
      echo "expected: $expect" >>"$log"
      bad "$values failed with another message under $(basename "$helm")" "$log"
    fi
  done
done

# The default values of the cluster chart need a cluster id.
if "$HELM" template causeway helm/causeway >"$OUT/defaults.log" 2>&1; then
  bad "helm/causeway rendered without cluster.id"
elif grep -qF "cluster.id is required" "$OUT/defaults.log"; then ok; else
  bad "helm/causeway without values failed with another message" "$OUT/defaults.log"
fi

# The CoreDNS Jobs' scripts, run against a fake kubectl with the real
# `causeway lighthouse corefile` (needs the binary, as the drift test does).
if [ -x "$BIN" ]; then
  if "$PY" helm/test/hooks.py "$HELM" helm/causeway "$BIN" target/k8s-tools/bin/kubectl \
    >"$OUT/hooks.log" 2>&1; then ok; else
    bad "the CoreDNS patch/unpatch Jobs (helm/test/hooks.py)" "$OUT/hooks.log"
  fi
fi

# CRD drift: crds/ is `causeway crdgen` output, in both charts.
if [ ! -x "$BIN" ]; then
  bad "no causeway binary at $BIN for the CRD drift test: build it (cargo build -p causeway-cli) or set CAUSEWAY_BIN"
elif ! "$BIN" crdgen >"$OUT/crdgen.yaml" 2>"$OUT/crdgen.err"; then
  bad "$BIN crdgen failed" "$OUT/crdgen.err"
else
  for chart in helm/causeway-broker helm/causeway; do
    if diff -u "$chart/crds/causeway-crds.yaml" "$OUT/crdgen.yaml" >"$OUT/crd-drift.diff"; then ok; else
      bad "$chart/crds/causeway-crds.yaml differs from causeway crdgen; regenerate: $BIN crdgen > $chart/crds/causeway-crds.yaml" "$OUT/crd-drift.diff"
    fi
  done
fi

echo "helm/test.sh: $passed passed, $failed failed (${validated:-no objects validated})"
if [ "$failed" -gt 0 ]; then
  printf '  - %s\n' "${failures[@]}"
  exit 1
fi
