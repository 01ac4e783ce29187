//! Image metadata (`image-meta`): key/value pairs in the header's omap.

use std::collections::BTreeMap;

use rbdm_store::{SnapContext, WriteOp};

use super::Image;
use crate::header::METADATA_PREFIX;
use crate::{Error, Result};

impl Image {
    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::Invalid("image-meta: empty key".into()));
        }
        self.check_fence()?;
        let op = WriteOp::new()
            .assert_exists()
            .omap_set([(format!("{METADATA_PREFIX}{key}"), value.as_bytes().to_vec())]);
        self.store()
            .operate(&self.header_loc(), &op, &SnapContext::default())?;
        Ok(())
    }

    pub fn metadata_get(&self, key: &str) -> Result<String> {
        let k = format!("{METADATA_PREFIX}{key}");
        let found = self.store().omap_get_keys(&self.header_loc(), &[&k])?;
        let v = found.get(&k).ok_or_else(|| Error::NoMetadata {
            image: self.name.clone(),
            key: key.into(),
        })?;
        Ok(String::from_utf8_lossy(v).into_owned())
    }

    pub fn metadata_remove(&self, key: &str) -> Result<()> {
        self.metadata_get(key)?;
        self.check_fence()?;
        let op = WriteOp::new().omap_rm([format!("{METADATA_PREFIX}{key}")]);
        self.store()
            .operate(&self.header_loc(), &op, &SnapContext::default())?;
        Ok(())
    }

    pub fn metadata_list(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .rbd
            .omap_all(&self.header_loc(), METADATA_PREFIX)?
            .into_iter()
            .map(|(k, v)| {
                (
                    k[METADATA_PREFIX.len()..].to_string(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }
}
