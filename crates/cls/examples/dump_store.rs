//! Dumps every object of an rbdm store in golden/capture.sh's text form, one file per pool,
//! so today's rbdm records can be compared with Ceph's (golden/compare.py).
//!
//!   cargo run -p rbdm-cls --example dump_store -- STORE_URI OUTDIR

use std::fmt::Write as _;

use rbdm_store::{Locator, ObjectStore, HEAD};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn dump_object(store: &dyn ObjectStore, loc: &Locator, out: &mut String) -> rbdm_store::Result<()> {
    let _ = writeln!(out, "object {}/{}", loc.namespace, loc.name);
    let size = store.stat(loc, HEAD)?.size;
    let data = store.read(loc, HEAD, 0, size)?;
    if data.len() <= 64 {
        let _ = writeln!(out, "data {} {}", data.len(), hex(&data));
    } else {
        // not comparable with Ceph's sha256 line by design: data objects are compared by export
        let _ = writeln!(out, "data {} len-only", data.len());
    }
    for (k, v) in store.get_xattrs(loc)? {
        let _ = writeln!(out, "xattr {k} {}", hex(&v));
    }
    let mut after = String::new();
    loop {
        let page = store.omap_get(loc, &after, "", 512)?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        for (k, v) in &page {
            let _ = writeln!(out, "omap {k} {}", hex(v));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, uri, outdir] = args.as_slice() else {
        return Err("usage: dump_store STORE_URI OUTDIR".into());
    };
    let store = rbdm_store::open(uri)?;
    std::fs::create_dir_all(outdir)?;
    for (id, name) in store.list_pools()? {
        let mut out = format!("# pool {name}, rbdm store {uri}\n");
        for loc in store.list_objects(id, None)? {
            dump_object(store.as_ref(), &loc, &mut out)?;
        }
        std::fs::write(format!("{outdir}/{name}.txt"), out)?;
    }
    Ok(())
}
