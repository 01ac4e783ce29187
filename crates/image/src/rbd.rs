//! The [`Rbd`] entry point, its object names and the helpers its subjects share; each
//! subject is a child module: pools and namespaces, the directory, create and clone, open,
//! remove, trash, the children registry, config-key.

use std::time::{SystemTime, UNIX_EPOCH};

use rbdm_store::{Error as StoreError, Locator, PoolId, SnapContext, StoreRef, WriteOp};

use crate::migration::MigrationOpener;
use crate::{Error, PoolSpec, Result};

mod children;
mod config_key;
mod create;
mod directory;
mod open;
mod pool;
mod remove;
mod trash;

pub use create::layout_for;
pub(crate) use directory::decode_name;

/// The entry point: images, pools' RBD state, namespaces, trash, config-key, on one store.
#[derive(Clone)]
pub struct Rbd {
    store: StoreRef,
    /// How migration destinations opened through this `Rbd` read their sources; `None`: they
    /// cannot (the image crate alone does not know how, see [`crate::migration`]).
    opener: Option<MigrationOpener>,
}

pub(crate) const DIRECTORY: &str = "rbd_directory";
pub(crate) const TRASH: &str = "rbd_trash";
pub(crate) const CHILDREN: &str = "rbd_children";
pub(crate) const NAMESPACES: &str = "rbd_namespace";
/// What `pool init` writes (`RBD_INFO`).
pub(crate) const RBD_INFO: &str = "rbd_info";

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn no_snapc() -> SnapContext {
    SnapContext::default()
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '@', '\0']) || name.len() > 255 {
        return Err(Error::Invalid(format!("invalid {kind} name '{name}'")));
    }
    Ok(())
}

impl Rbd {
    /// RBD on `store`; nothing is read or written until the first call.
    pub fn new(store: StoreRef) -> Self {
        Rbd {
            store,
            opener: None,
        }
    }
    /// The same, with destinations opened through it (and through every image it opens)
    /// reading their sources by `opener`.
    pub fn with_opener(self, opener: MigrationOpener) -> Self {
        Rbd {
            opener: Some(opener),
            ..self
        }
    }
    pub(crate) fn opener(&self) -> Option<MigrationOpener> {
        self.opener
    }
    /// The store this `Rbd` works on.
    pub fn store(&self) -> &StoreRef {
        &self.store
    }

    pub(crate) fn pool_id(&self, pool: &str) -> Result<PoolId> {
        self.store.pool_id(pool).map_err(|e| match e {
            StoreError::NoPool(_) => Error::NoPool(pool.into()),
            e => e.into(),
        })
    }

    pub(crate) fn loc(&self, spec: &PoolSpec, name: &str) -> Result<Locator> {
        Ok(Locator::new(
            self.pool_id(&spec.pool)?,
            &spec.namespace,
            name,
        ))
    }

    /// Removes the object at `loc`; one already gone counts as removed (each step of a
    /// multi-step operation may run again after a kill).
    pub(crate) fn remove_object(&self, loc: &Locator) -> Result<()> {
        crate::image::ignore_not_found(self.store.operate(
            loc,
            &WriteOp::new().remove(),
            &no_snapc(),
        ))
    }

    /// Every omap entry of `loc` whose key starts with `prefix`; an absent object has none.
    pub(crate) fn omap_all(&self, loc: &Locator, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = match self.store.omap_get(loc, &after, prefix, 1024) {
                Err(StoreError::NoObject { .. }) => break,
                r => r?,
            };
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            out.extend(page);
        }
        Ok(out)
    }
}
