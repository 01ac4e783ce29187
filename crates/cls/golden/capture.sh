#!/usr/bin/env bash
# capture.sh - dump Ceph's own RBD format 2 records as golden files.
#
#   crates/cls/golden/capture.sh [OUTDIR]
#
# Creates, with Ceph's `rbd`, the image set of issue 15 on a throwaway
# cluster, then writes every object of every pool involved (data, xattrs,
# omap, exact bytes) to OUTDIR (default: crates/cls/tests/golden/pacific-16.2.15)
# as one text file per pool, plus `views.txt` (what `rbd` itself says).
#
# The cluster: $CEPH_CONF if set (it must be FRESH: pool `rbd` initialised
# and empty, no pool `rbddata`), otherwise the script starts one with
# ../shared/tools/microceph.sh (memstore) in a temporary directory and purges
# it on exit.  Needs ceph-mon ceph-osd ceph-common (Pacific 16.2.15), jq.
#
# Dump format (sorted, one record a line, values in lower-case hex):
#   object <namespace>/<name>
#   data <len> <hex>            when len <= 64, else
#   data <len> sha256:<digest>
#   xattr <name> <hex>
#   omap <key> <hex>            (keys are printable ASCII in every RBD record)
#
# What varies between runs (everything else is stable):
#   - image ids (`rbd_id.*` data, `id_*`/`name_*` keys, object names
#     `rbd_header.<id>`, `rbd_data.<id>.*`, `rbd_object_map.<id>*`, and the
#     ids inside child/trash/migration records), and object_prefix values;
#   - timestamps: create/access/modify_timestamp, snapshot timestamps,
#     trash deletion/deferment times (utime_t);
#   - snapshot ids and snap_seq depend on the pool's snapshot sequence;
#   - lock records: the locker's client id (client.<global_id>), its address
#     and nonce, and the exclusive-lock cookie (`auto <handle>`);
#   - the data written by `rbd bench` (its fill byte comes from rand()).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../tests/golden/pacific-16.2.15}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
MICROCEPH=${MICROCEPH:-$ROOT/../shared/tools/microceph.sh}

log() { echo "[capture $(date +%T)] $*" >&2; }

OWN_CLUSTER=
if [[ -z ${CEPH_CONF:-} ]]; then
  OWN_CLUSTER=$(mktemp -d /tmp/rbdm-cls-ceph.XXXXXX)
  rmdir "$OWN_CLUSTER"
  [[ -x $MICROCEPH ]] || { echo "capture: set MICROCEPH=path/to/microceph.sh or CEPH_CONF" >&2; exit 1; }
  trap '"$MICROCEPH" purge "$OWN_CLUSTER" || true' EXIT
  "$MICROCEPH" start "$OWN_CLUSTER" --store memstore --osd-size 2G \
    --port-base "${PORT_BASE:-46000}" >&2
  export CEPH_CONF=$OWN_CLUSTER/ceph.conf
fi

BENCH_PID=
stop_bench() {
  if [[ -n $BENCH_PID ]]; then
    kill -KILL "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
    BENCH_PID=
  fi
}

# Deterministic payload: N KiB of a byte pattern seeded by a label.
payload() { # label kib file
  local label=$1 kib=$2 file=$3
  python3 - "$label" "$kib" "$file" <<'PY'
import hashlib, sys
label, kib, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "wb") as f:
    for i in range(kib * 1024 // 32):
        f.write(hashlib.sha256(f"{label}:{i}".encode()).digest())
PY
}

TMP=$(mktemp -d /tmp/rbdm-cls-capture.XXXXXX)
trap 'stop_bench; rm -rf "$TMP"; [[ -n $OWN_CLUSTER ]] && "$MICROCEPH" purge "$OWN_CLUSTER" || true' EXIT

make_images() {
  log "pools and namespace"
  ceph osd pool create rbddata 8 8 >&2
  rbd pool init rbddata
  rbd namespace create rbd/ns1

  log "plain image with data, image-meta and an advisory lock"
  payload plain 1536 "$TMP/plain"
  rbd import --image-format 2 "$TMP/plain" rbd/plain --no-progress
  rbd image-meta set rbd/plain owner rbdm-golden
  rbd image-meta set rbd/plain conf_rbd_cache false
  rbd lock add rbd/plain golden-cookie --shared golden-tag

  log "striped image"
  payload striped 1024 "$TMP/striped"
  rbd import --stripe-unit 64K --stripe-count 4 "$TMP/striped" rbd/striped --no-progress

  log "snapshots, one protected, with a clone v2 child"
  payload snap1 512 "$TMP/snap1"
  rbd import "$TMP/snap1" rbd/snapimg --no-progress
  rbd snap create rbd/snapimg@s1
  payload snap2 256 "$TMP/snap2"
  rbd bench --io-type write --io-size 64K --io-total 256K --io-pattern seq \
    --io-threads 1 rbd/snapimg >/dev/null
  rbd snap create rbd/snapimg@s2
  rbd snap protect rbd/snapimg@s2
  rbd clone --rbd-default-clone-format 2 rbd/snapimg@s2 rbd/child
  rbd bench --io-type write --io-size 4K --io-total 8K --io-pattern seq \
    --io-threads 1 rbd/child >/dev/null
  rbd snap create rbd/child@c1

  log "trash entry"
  rbd create --size 4M rbd/trashed
  rbd trash mv rbd/trashed

  log "data pool"
  payload datapool 512 "$TMP/datapool"
  rbd import --data-pool rbddata "$TMP/datapool" rbd/dpimg --no-progress

  log "namespace image"
  payload ns 256 "$TMP/ns"
  rbd import "$TMP/ns" rbd/ns1/nsimg --no-progress

  log "migrations: a prepared one and an import-only one from a native spec"
  payload migsrc 512 "$TMP/migsrc"
  rbd import "$TMP/migsrc" rbd/migsrc --no-progress
  rbd migration prepare rbd/migsrc rbd/migdst
  rbd snap create rbd/snapimg@forimport
  rbd migration prepare --import-only --source-spec \
    '{"type":"native","pool_name":"rbd","image_name":"snapimg","snap_name":"forimport"}' \
    rbd/migimp

  log "exclusive-lock holder (rbd bench killed while it holds the lock)"
  rbd create --size 4M rbd/locked
  rbd bench --io-type write --io-size 4K --io-total 100G --io-pattern rand \
    --io-threads 1 rbd/locked >/dev/null 2>&1 &
  BENCH_PID=$!
  local i
  for i in $(seq 1 100); do
    rbd lock ls rbd/locked 2>/dev/null | grep -q 'auto' && break
    sleep 0.2
  done
  stop_bench
}

hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }

dump_object() { # pool ns name
  local pool=$1 ns=$2 name=$3 len x k
  local r=(rados -p "$pool" -N "$ns")
  echo "object $ns/$name"
  "${r[@]}" get "$name" "$TMP/obj"
  len=$(stat -c %s "$TMP/obj")
  if (( len <= 64 )); then
    echo "data $len $(hex "$TMP/obj")"
  else
    echo "data $len sha256:$(sha256sum < "$TMP/obj" | cut -d' ' -f1)"
  fi
  for x in $("${r[@]}" listxattr "$name" | sort); do
    "${r[@]}" getxattr "$name" "$x" > "$TMP/val"
    echo "xattr $x $(hex "$TMP/val")"
  done
  "${r[@]}" listomapkeys "$name" | LC_ALL=C sort | while IFS= read -r k; do
    "${r[@]}" getomapval "$name" "$k" "$TMP/val" >/dev/null
    echo "omap $k $(hex "$TMP/val")"
  done
}

dump_pool() { # pool
  local pool=$1 ns name
  echo "# pool $pool, ceph $(rbd --version | cut -d' ' -f3)"
  rados -p "$pool" --format json ls --all \
    | jq -r '.[] | "\(.namespace)|\(.name)"' | LC_ALL=C sort \
    | while IFS="|" read -r ns name; do dump_object "$pool" "$ns" "$name"; done
}

views() {
  local img
  for img in plain striped snapimg child dpimg migdst migimp locked ns1/nsimg; do
    echo "## rbd info rbd/$img"; rbd info --format json "rbd/$img" || true; echo
    echo "## rbd snap ls --all rbd/$img"; rbd snap ls --all --format json "rbd/$img" || true; echo
  done
  echo "## rbd children --all rbd/snapimg@s2"; rbd children --all --format json rbd/snapimg@s2; echo
  echo "## rbd trash ls --all --long"; rbd trash ls --all --long --format json rbd; echo
  echo "## rbd image-meta list rbd/plain"; rbd image-meta list --format json rbd/plain; echo
  echo "## rbd lock ls rbd/plain"; rbd lock ls --format json rbd/plain; echo
  echo "## rbd lock ls rbd/locked"; rbd lock ls --format json rbd/locked; echo
  echo "## rbd migration status (via rbd status)"; rbd status --format json rbd/migdst; echo
  rbd status --format json rbd/migimp; echo
  echo "## rbd namespace ls"; rbd namespace ls --format json rbd; echo
}

make_images
log "dumping"
dump_pool rbd > "$OUT/rbd.txt"
dump_pool rbddata > "$OUT/rbddata.txt"
views > "$OUT/views.txt" 2>&1
log "wrote $OUT"
