#!/usr/bin/env bash
# rbdm-set.sh - the image set of capture.sh, made with today's `rbdm` on a dir store, then
# dumped in the same text form (examples/dump_store.rs) for compare.py.
#
#   crates/cls/golden/rbdm-set.sh OUTDIR     (run from the workspace root, after
#                                             cargo build -p rbdm-cli --bin rbdm and
#                                             cargo build -p rbdm-cls --example dump_store)
set -euo pipefail
OUT=$(realpath -m "$1")
R=${RBDM:-$PWD/target/debug/rbdm}
DUMP=${DUMP:-$PWD/target/debug/examples/dump_store}
TMP=$(mktemp -d /tmp/rbdm-cls-set.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export RBDM_STORE=dir://$TMP/store

payload() { # label kib file (same bytes as capture.sh)
  python3 - "$@" <<'PY'
import hashlib, sys
label, kib, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "wb") as f:
    for i in range(kib * 1024 // 32):
        f.write(hashlib.sha256(f"{label}:{i}".encode()).digest())
PY
}

$R pool create rbd 2>/dev/null || true
$R pool init rbd 2>/dev/null || true
$R pool create rbddata 2>/dev/null || true
$R pool init rbddata 2>/dev/null || true
$R namespace create rbd/ns1

payload plain 1536 "$TMP/plain"
$R import "$TMP/plain" rbd/plain --no-progress
$R image-meta set rbd/plain owner rbdm-golden
$R image-meta set rbd/plain conf_rbd_cache false
$R lock add rbd/plain golden-cookie --shared golden-tag

payload striped 1024 "$TMP/striped"
$R import --stripe-unit 64K --stripe-count 4 "$TMP/striped" rbd/striped --no-progress

payload snap1 512 "$TMP/snap1"
$R import "$TMP/snap1" rbd/snapimg --no-progress
$R snap create rbd/snapimg@s1
$R bench --io-type write --io-size 64K --io-total 256K --io-pattern seq --io-threads 1 rbd/snapimg >/dev/null
$R snap create rbd/snapimg@s2
$R snap protect rbd/snapimg@s2
$R clone rbd/snapimg@s2 rbd/child
$R bench --io-type write --io-size 4K --io-total 8K --io-pattern seq --io-threads 1 rbd/child >/dev/null
$R snap create rbd/child@c1

$R create --size 4M rbd/trashed
$R trash mv rbd/trashed

payload datapool 512 "$TMP/datapool"
$R import --data-pool rbddata "$TMP/datapool" rbd/dpimg --no-progress

payload ns 256 "$TMP/ns"
$R import "$TMP/ns" rbd/ns1/nsimg --no-progress

payload migsrc 512 "$TMP/migsrc"
$R import "$TMP/migsrc" rbd/migsrc --no-progress
$R migration prepare rbd/migsrc rbd/migdst
$R snap create rbd/snapimg@forimport
$R migration prepare --import-only --source-spec \
  '{"type":"native","pool_name":"rbd","image_name":"snapimg","snap_name":"forimport"}' \
  rbd/migimp || echo "rbdm-set: import-only from a native spec failed" >&2

$R create --size 4M rbd/locked
"$DUMP" "$RBDM_STORE" "$OUT"
