#!/usr/bin/env bash
# Validate every manifest in deploy/ offline against the official Kubernetes
# OpenAPI schemas (strict: unknown fields are errors).
#
#   bash deploy/validate.sh [FILE.yaml ...]     # default: deploy/*.yaml
#
# Uses the kubernetes-validate package (schemas ship inside it) in a venv at
# target/venv-deploy, created on first use.  KUBERNETES_VERSIONS picks the
# schema versions (default: the oldest and a recent supported release).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

validator_version="1.37.0"
versions="${KUBERNETES_VERSIONS:-1.30.0 1.34.0}"
venv="target/venv-deploy"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  python3 -m venv "$venv"
fi
installed="$("$venv/bin/python" -m pip show kubernetes-validate 2>/dev/null || true)"
if ! grep -qx "Version: $validator_version" <<<"$installed"; then
  echo "installing kubernetes-validate==$validator_version into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$validator_version"
fi

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  files=(deploy/*.yaml)
fi

status=0
for v in $versions; do
  echo "== Kubernetes $v: ${files[*]}"
  if ! "$venv/bin/kubernetes-validate" --strict -k "$v" "${files[@]}"; then
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "deploy/validate.sh: validation FAILED" >&2
else
  echo "deploy/validate.sh: all manifests valid"
fi
exit "$status"
