#!/usr/bin/env python3
"""compare.py CEPH_DIR RBDM_DIR - record-by-record comparison of two dumps of the same image
set (capture.sh on Ceph, rbdm-set.sh on rbdm), image ids and snapshot ids normalised.

Prints one line per (pool, object, place) and a summary. Classes:
  equal       same bytes once ids are replaced by same-length tokens
  equal~time  timestamp or snap_seq key, both 8 bytes (values vary by run / snap sequence)
  differs     another encoding
  ceph-only / rbdm-only
Data objects larger than 64 bytes are not compared here (export compares the image data).
"""
import re
import sys
from collections import Counter, OrderedDict

NAMES = ["plain", "striped", "snapimg", "child", "trashed", "dpimg", "nsimg",
         "migsrc", "migdst", "migimp", "locked"]


def parse(path):
    objs = OrderedDict()
    cur = None
    for line in open(path):
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        tag, _, rest = line.partition(" ")
        if tag == "object":
            cur = objs.setdefault(rest, OrderedDict())
            continue
        first, _, value = rest.partition(" ")
        if tag == "data":
            if value.startswith("sha256:") or value == "len-only":
                continue
            cur[("data", "")] = bytes.fromhex(value)
        else:
            cur[(tag, first)] = bytes.fromhex(value)
    return objs


def directory_ids(objs):
    """image id -> name, from every rbd_directory and rbd_trash."""
    ids = {}
    for oname, recs in objs.items():
        if oname.endswith("/rbd_directory"):
            for (tag, key), v in recs.items():
                if tag == "omap" and key.startswith("name_"):
                    raw = v[4:] if len(v) >= 4 and int.from_bytes(v[:4], "little") == len(v) - 4 else v
                    ids[raw.decode()] = key[5:]
        if oname.endswith("/rbd_trash"):
            for (tag, key), v in recs.items():
                for n in NAMES:
                    if n.encode() in v:
                        ids[key[3:]] = n
    return ids


def snap_index(objs, ids):
    """(image id, snap id) -> ordinal of that snapshot in its image's header."""
    out = {}
    for oname, recs in objs.items():
        m = re.search(r"rbd_header\.(\w+)$", oname)
        if not m:
            continue
        snaps = sorted(int(k[9:], 16) for (t, k) in recs if t == "omap" and k.startswith("snapshot_"))
        for i, s in enumerate(snaps):
            out[(m.group(1), s)] = i
    return out


def normaliser(objs):
    ids = directory_ids(objs)
    snaps = snap_index(objs, ids)

    def token(iid):
        return ("<" + ids.get(iid, "?") + ">").ljust(len(iid), "_")[: len(iid)]

    def name(oname):
        for iid in sorted(ids, key=len, reverse=True):
            if iid in oname:
                m = re.search(re.escape(iid) + r"\.([0-9a-f]{16})$", oname)
                if m and oname.split("/")[-1].startswith("rbd_object_map"):
                    return oname.replace(m.group(0), "%s@%s" % (ids[iid], snaps.get((iid, int(m.group(1), 16)), "?")))
                return oname.replace(iid, ids[iid])
        return oname

    def key(oname, k):
        m = re.search(r"rbd_header\.(\w+)$", oname)
        if m:
            km = re.match(r"(snapshot_|snap_children_)([0-9a-f]{16})$", k)
            if km:
                return km.group(1) + "@%s" % snaps.get((m.group(1), int(km.group(2), 16)), "?")
        for iid in ids:
            if iid in k:
                return k.replace(iid, ids[iid])
        return k

    def value(v):
        for iid in ids:
            v = v.replace(iid.encode(), token(iid).encode())
        return v

    def norm():
        out = OrderedDict()
        for oname, recs in objs.items():
            for (tag, k), v in recs.items():
                out[(name(oname), tag, key(oname, k))] = value(v)
        return out

    return norm()


LOOSE = {"create_timestamp", "access_timestamp", "modify_timestamp", "snap_seq"}


def main():
    ceph_dir, rbdm_dir = sys.argv[1], sys.argv[2]
    total = Counter()
    for pool in ["rbd", "rbddata"]:
        c = normaliser(parse(f"{ceph_dir}/{pool}.txt"))
        r = normaliser(parse(f"{rbdm_dir}/{pool}.txt"))
        for k in sorted(set(c) | set(r)):
            if k[0].split("/")[-1].startswith("rbd_data."):
                continue
            if k not in r:
                cls = "ceph-only"
            elif k not in c:
                cls = "rbdm-only"
            elif c[k] == r[k]:
                cls = "equal"
            elif k[2] in LOOSE and len(c[k]) == len(r[k]) == 8:
                cls = "equal~time"
            else:
                cls = "differs"
            total[cls] += 1
            print(f"{cls:11} {pool:7} {k[0]:40} {k[1]:5} {k[2]}")
    print("summary:", dict(total))


main()
