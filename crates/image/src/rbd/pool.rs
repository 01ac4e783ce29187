//! Pools and namespaces: create, remove, list, and the check that a namespace exists.

use rbdm_cls::directory::{DirectoryState, STATE_KEY};
use rbdm_cls::header::RBD_INFO_OVERWRITE_VALIDATED;
use rbdm_store::{Error as StoreError, WriteOp};

use super::{check_name, no_snapc, Rbd, DIRECTORY, NAMESPACES, RBD_INFO, TRASH};
use crate::{Error, PoolSpec, Result};

impl Rbd {
    /// Creates a pool; `Invalid`: a bad or reserved ('.'-prefixed) name; `Exists`: it exists.
    pub fn pool_create(&self, pool: &str) -> Result<()> {
        check_name("pool", pool)?;
        if pool.starts_with('.') {
            return Err(Error::Invalid(format!(
                "pool names starting with '.' are reserved: '{pool}'"
            )));
        }
        match self.store.create_pool(pool) {
            Ok(_) => Ok(()),
            Err(StoreError::Exists(_)) => {
                Err(Error::Exists(format!("pool '{pool}' already exists")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Marks the pool as RBD's, as `rbd pool init` does: `rbd_info` says overwrites work
    /// (they always do here). `NoPool` without the pool.
    pub fn pool_init(&self, pool: &str) -> Result<()> {
        let loc = self.loc(&PoolSpec::new(pool, ""), RBD_INFO)?;
        let op = WriteOp::new().write_full(RBD_INFO_OVERWRITE_VALIDATED);
        self.store.operate(&loc, &op, &no_snapc())?;
        Ok(())
    }

    /// Refused (`Busy`) while the pool holds images, unless `force`.
    pub fn pool_remove(&self, pool: &str, force: bool) -> Result<()> {
        let id = self.pool_id(pool)?;
        if !force {
            let images = self
                .store
                .list_objects(id, None)?
                .into_iter()
                .filter(|l| l.name.starts_with("rbd_header."))
                .count();
            if images > 0 {
                return Err(Error::Busy(format!(
                    "pool '{pool}' still holds {images} image(s)"
                )));
            }
        }
        self.store.remove_pool(pool)?;
        Ok(())
    }

    /// The pools' names, sorted, without the hidden ('.'-prefixed) ones.
    pub fn pool_list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .list_pools()?
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Creates namespace `ns`; `Invalid`: a bad name; `NoPool`: no pool; `Exists`: it exists.
    pub fn namespace_create(&self, pool: &str, ns: &str) -> Result<()> {
        check_name("namespace", ns)?;
        let loc = self.loc(&PoolSpec::new(pool, ""), NAMESPACES)?;
        let key = format!("name_{ns}");
        let op = WriteOp::new()
            .omap_cmp(&key, None)
            .omap_set([(key.clone(), Vec::new())]);
        match self.store.operate(&loc, &op, &no_snapc()) {
            Err(StoreError::Canceled(_)) => {
                return Err(Error::Exists(format!(
                    "namespace '{pool}/{ns}' already exists"
                )))
            }
            r => r?,
        }
        // Then its directory, ready for images (librbd's `dir_state_set`).
        let dir = self.loc(&PoolSpec::new(pool, ns), DIRECTORY)?;
        let state = [(STATE_KEY.to_string(), DirectoryState::Ready.encode())];
        self.store
            .operate(&dir, &WriteOp::new().omap_set(state), &no_snapc())?;
        Ok(())
    }

    /// Refused (`Busy`) while the namespace holds images.
    pub fn namespace_remove(&self, pool: &str, ns: &str) -> Result<()> {
        self.check_namespace(&PoolSpec::new(pool, ns))?;
        let spec = PoolSpec::new(pool, ns);
        if !self.list(&spec)?.is_empty() || !self.trash_list(&spec, true)?.is_empty() {
            return Err(Error::Busy(format!("namespace '{pool}/{ns}' is not empty")));
        }
        // Its own objects first, then its name, as librbd's.
        for object in [DIRECTORY, TRASH] {
            self.remove_object(&self.loc(&spec, object)?)?;
        }
        let loc = self.loc(&PoolSpec::new(pool, ""), NAMESPACES)?;
        self.store.operate(
            &loc,
            &WriteOp::new().omap_rm([format!("name_{ns}")]),
            &no_snapc(),
        )?;
        Ok(())
    }

    /// The namespaces created in `pool` (not ""); `NoPool` without the pool.
    pub fn namespace_list(&self, pool: &str) -> Result<Vec<String>> {
        let loc = self.loc(&PoolSpec::new(pool, ""), NAMESPACES)?;
        Ok(self
            .omap_all(&loc, "name_")?
            .into_iter()
            .map(|(k, _)| k["name_".len()..].to_string())
            .collect())
    }

    /// `NoPool`, `NoNamespace` unless the pool exists and the namespace ("" always does) was
    /// created.
    pub fn check_namespace(&self, spec: &PoolSpec) -> Result<()> {
        self.pool_id(&spec.pool)?;
        if spec.namespace.is_empty() || self.namespace_list(&spec.pool)?.contains(&spec.namespace) {
            Ok(())
        } else {
            Err(Error::NoNamespace(spec.to_string()))
        }
    }
}
