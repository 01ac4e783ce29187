//! `fsck`: objects in the store that no image owns, and images whose records point at
//! nothing: what a killed multi-step operation would leave behind if it were not re-runnable.
//!
//! Ownership follows the RBD layout: a pool's `rbd_directory` and `rbd_trash` name the images
//! (by id); an image owns `rbd_header.<id>`, `rbd_object_map.<id>[.<snap>]`, its side objects
//! `rbdm_*.<id>`, `rbd_id.<name>` while the directory names it, and `rbd_data.<id>.*` in its
//! data pool, where an object that exists only as clones must still hold one of the image's
//! snapshots. Everything else in an image pool is reported.

use std::collections::{BTreeMap, BTreeSet};

use rbdm_store::{Locator, PoolId};

use crate::header::{self, Header};
use crate::rbd::{decode_name, CHILDREN, DIRECTORY, NAMESPACES, RBD_INFO, TRASH};
use crate::{Error, PoolSpec, Rbd, Result};

/// One problem found: the object (or image) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `pool/[namespace/]name`.
    pub object: String,
    pub problem: String,
}

/// The images of one pool and namespace: their ids (with their snapshot ids, where the
/// header was readable), and the names in the directory.
#[derive(Default)]
struct Known {
    ids: BTreeSet<String>,
    names: BTreeSet<String>,
    snaps: BTreeMap<String, BTreeSet<u64>>,
}

/// Where each image keeps its data: (data pool, namespace, object prefix) → its snapshot ids.
/// By prefix, not id: librbd names an image's data objects `rbd_data.<pool id>.<id>.*` when
/// it has a data pool.
type DataOwners = BTreeMap<(PoolId, String, String), BTreeSet<u64>>;

fn label(pool: &str, ns: &str, name: &str) -> String {
    match ns {
        "" => format!("{pool}/{name}"),
        _ => format!("{pool}/{ns}/{name}"),
    }
}

impl Rbd {
    /// Every object of `pool` (all image pools if `None`) that no image owns, and every
    /// image entry whose header is missing. Empty means consistent.
    pub fn fsck(&self, pool: Option<&str>) -> Result<Vec<Finding>> {
        let mut known: BTreeMap<(PoolId, String), Known> = BTreeMap::new();
        let mut data: DataOwners = BTreeMap::new();
        let mut out = Vec::new();
        for p in self.pool_list()? {
            let pid = self.pool_id(&p)?;
            let mut spaces = vec![String::new()];
            spaces.extend(self.namespace_list(&p)?);
            for ns in spaces {
                let k = self.known_images(&p, pid, &ns, &mut data, &mut out)?;
                known.insert((pid, ns), k);
            }
        }
        let pools: Vec<String> = match pool {
            Some(p) => vec![p.to_string()],
            None => self.pool_list()?,
        };
        for p in pools {
            let pid = self.pool_id(&p)?;
            for loc in self.store().list_all_objects(pid, None)? {
                let empty = Known::default();
                let k = known.get(&(pid, loc.namespace.clone())).unwrap_or(&empty);
                if let Some(problem) = self.owner_problem(&loc, k, &data)? {
                    out.push(Finding {
                        object: label(&p, &loc.namespace, &loc.name),
                        problem,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.object.cmp(&b.object));
        out.dedup();
        Ok(out)
    }

    /// The images the directory and trash of one namespace name; a name without a header
    /// is a finding.
    fn known_images(
        &self,
        pool: &str,
        pid: PoolId,
        ns: &str,
        data: &mut DataOwners,
        out: &mut Vec<Finding>,
    ) -> Result<Known> {
        let spec = PoolSpec::new(pool, ns);
        let mut k = Known::default();
        let dir = self.omap_all(&self.loc(&spec, DIRECTORY)?, "")?;
        for (key, v) in &dir {
            if let Some(id) = key.strip_prefix("id_") {
                k.ids.insert(id.to_string());
            } else if let Some(name) = key.strip_prefix("name_") {
                k.names.insert(name.to_string());
                k.ids
                    .insert(decode_name(&format!("directory entry {key}"), v)?);
            }
        }
        for (key, _) in self.omap_all(&self.loc(&spec, TRASH)?, "id_")? {
            k.ids.insert(key["id_".len()..].to_string());
        }
        let listed: Vec<String> = k.ids.iter().cloned().collect();
        for (what, op) in self.dead_intents(&spec, &listed)? {
            out.push(Finding {
                object: label(pool, ns, &what),
                problem: format!("unfinished operation {op} (any command on it finishes it)"),
            });
        }
        // An image being created owns its header and id object before its name.
        for (id, name) in self.creating(&spec)? {
            k.names.insert(name);
            k.ids.insert(id);
        }
        for id in &k.ids {
            let hloc = Locator::new(pid, ns, &header::header_name(id));
            match Header::load(self.store(), &hloc) {
                Ok(h) => {
                    let dp = h.data_pool_id.unwrap_or(pid);
                    let snaps: BTreeSet<u64> = h.snaps.keys().copied().collect();
                    k.snaps.insert(id.clone(), snaps.clone());
                    data.insert((dp, ns.to_string(), h.object_prefix.clone()), snaps);
                }
                Err(Error::Store(rbdm_store::Error::NoObject { .. })) if !listed.contains(id) => {}
                Err(e) => out.push(Finding {
                    object: label(pool, ns, &header::header_name(id)),
                    problem: format!(
                        "image id '{id}' is listed but its header is unreadable: {}",
                        rbdm_store::report(&e)
                    ),
                }),
            }
        }
        Ok(k)
    }

    /// Why no image owns `loc`, or `None` if one does.
    fn owner_problem(&self, loc: &Locator, k: &Known, data: &DataOwners) -> Result<Option<String>> {
        let name = loc.name.as_str();
        if [DIRECTORY, TRASH, CHILDREN].contains(&name)
            || ([NAMESPACES, RBD_INFO].contains(&name) && loc.namespace.is_empty())
        {
            return Ok(None);
        }
        if let Some(n) = name.strip_prefix("rbd_id.") {
            return Ok((!k.names.contains(n)).then(|| format!("id object of no image named '{n}'")));
        }
        let owned_by_id = |id: &str, what: &str| {
            (!k.ids.contains(id))
                .then(|| format!("{what} of image id '{id}', which no directory or trash lists"))
        };
        if let Some(id) = name.strip_prefix("rbd_header.") {
            return Ok(owned_by_id(id, "header"));
        }
        if let Some(rest) = name.strip_prefix("rbd_object_map.") {
            let (id, snap) = rest.split_once('.').unwrap_or((rest, ""));
            if let Some(problem) = owned_by_id(id, "object map") {
                return Ok(Some(problem));
            }
            let live = |s: u64| k.snaps.get(id).is_none_or(|set| set.contains(&s));
            return Ok(match u64::from_str_radix(snap, 16) {
                Ok(s) if !live(s) => Some(format!(
                    "object map of snapshot {s} of image id '{id}', which has no such snapshot"
                )),
                _ => None,
            });
        }
        if let Some(rest) = name.strip_prefix("rbd_data.") {
            let id = rest.rsplit_once('.').map(|(id, _)| id).unwrap_or(rest);
            let key = (loc.pool, loc.namespace.clone(), format!("rbd_data.{id}"));
            let Some(snaps) = data.get(&key) else {
                return Ok(Some(format!(
                    "data object of image id '{id}', which no directory or trash lists"
                )));
            };
            return self.clone_problem(loc, snaps);
        }
        if let Some((kind, id)) = name
            .rsplit_once('.')
            .filter(|(kind, _)| kind.starts_with("rbdm_"))
        {
            return Ok(owned_by_id(id, kind));
        }
        Ok(Some("an object no rbdm image layout names".into()))
    }

    /// A data object kept only as clones must hold at least one live snapshot of its image.
    fn clone_problem(&self, loc: &Locator, snaps: &BTreeSet<u64>) -> Result<Option<String>> {
        let set = self.store().list_snaps(loc)?;
        if set.head_size.is_some() {
            return Ok(None);
        }
        let live = set
            .clones
            .iter()
            .any(|c| c.snaps.iter().any(|s| snaps.contains(s)));
        Ok(
            (!live)
                .then(|| "clone of removed snapshots only (a snapshot removal cut short)".into()),
        )
    }
}
