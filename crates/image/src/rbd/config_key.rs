//! The store-wide config-key store: one omap in a hidden pool.

use rbdm_store::{Error as StoreError, Locator, WriteOp};

use super::{no_snapc, Rbd};
use crate::{Error, Result};

/// Store-wide state lives in a pool `ls` does not show.
const HIDDEN_POOL: &str = ".rbdm";
const CONFIG_KEY: &str = "config_key";

impl Rbd {
    fn config_loc(&self) -> Result<Locator> {
        let id = match self.store.pool_id(HIDDEN_POOL) {
            Ok(id) => id,
            Err(StoreError::NoPool(_)) => match self.store.create_pool(HIDDEN_POOL) {
                Ok(id) => id,
                Err(StoreError::Exists(_)) => self.store.pool_id(HIDDEN_POOL)?,
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        Ok(Locator::new(id, "", CONFIG_KEY))
    }

    /// Sets `key` to `value`, replacing any value; `Invalid` for an empty key.
    pub fn config_key_set(&self, key: &str, value: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::Invalid("config-key: empty key".into()));
        }
        self.store.operate(
            &self.config_loc()?,
            &WriteOp::new().omap_set([(key.to_string(), value.to_vec())]),
            &no_snapc(),
        )?;
        Ok(())
    }

    /// The value of `key`; `NoConfigKey` if it is not set.
    pub fn config_key_get(&self, key: &str) -> Result<Vec<u8>> {
        let found = match self.store.omap_get_keys(&self.config_loc()?, &[key]) {
            Err(StoreError::NoObject { .. }) => Default::default(),
            r => r?,
        };
        found
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NoConfigKey(key.into()))
    }

    /// Removes `key`; `NoConfigKey` if it is not set.
    pub fn config_key_remove(&self, key: &str) -> Result<()> {
        self.config_key_get(key)?;
        self.store.operate(
            &self.config_loc()?,
            &WriteOp::new().omap_rm([key]),
            &no_snapc(),
        )?;
        Ok(())
    }

    /// Every key set.
    pub fn config_key_list(&self) -> Result<Vec<String>> {
        Ok(self
            .omap_all(&self.config_loc()?, "")?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
}
