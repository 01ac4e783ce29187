//! Image and pool specs as the `rbd` command writes them: `[pool/[namespace/]]image[@snap]`.

use std::fmt;

use crate::{Error, Result};

/// The pool used when a spec names none.
pub const DEFAULT_POOL: &str = "rbd";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    pub pool: String,
    /// "" is the default namespace.
    pub namespace: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    pub pool: String,
    pub namespace: String,
    pub image: String,
    pub snap: Option<String>,
}

impl PoolSpec {
    pub fn new(pool: &str, namespace: &str) -> Self {
        PoolSpec {
            pool: pool.into(),
            namespace: namespace.into(),
        }
    }
    /// `pool[/namespace]`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = s.split('/');
        let pool = parts.next().unwrap_or_default();
        let ns = parts.next().unwrap_or_default();
        if pool.is_empty() || parts.next().is_some() || s.contains('@') {
            return Err(Error::Invalid(format!("invalid pool spec '{s}'")));
        }
        Ok(PoolSpec::new(pool, ns))
    }
    pub fn image(&self, name: &str) -> ImageSpec {
        ImageSpec {
            pool: self.pool.clone(),
            namespace: self.namespace.clone(),
            image: name.into(),
            snap: None,
        }
    }
}

impl ImageSpec {
    /// Parses `[pool/[namespace/]]image[@snap]`; `default_pool` fills a missing pool.
    pub fn parse(s: &str, default_pool: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("invalid image spec '{s}'"));
        let (path, snap) = match s.split_once('@') {
            Some((p, snap)) if !snap.is_empty() && !snap.contains('@') => {
                (p, Some(snap.to_string()))
            }
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (pool, ns, image) = match parts.as_slice() {
            [image] => (default_pool, "", *image),
            [pool, image] => (*pool, "", *image),
            [pool, ns, image] => (*pool, *ns, *image),
            _ => return Err(bad()),
        };
        if pool.is_empty() || image.is_empty() || (parts.len() == 3 && ns.is_empty()) {
            return Err(bad());
        }
        Ok(ImageSpec {
            pool: pool.into(),
            namespace: ns.into(),
            image: image.into(),
            snap,
        })
    }
    pub fn pool_spec(&self) -> PoolSpec {
        PoolSpec::new(&self.pool, &self.namespace)
    }
    pub fn with_snap(&self, snap: Option<&str>) -> Self {
        ImageSpec {
            snap: snap.map(str::to_string),
            ..self.clone()
        }
    }
}

impl fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.pool)
        } else {
            write!(f, "{}/{}", self.pool, self.namespace)
        }
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool_spec(), self.image)?;
        if let Some(snap) = &self.snap {
            write!(f, "@{snap}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_shape() {
        let s = ImageSpec::parse("img", DEFAULT_POOL).unwrap();
        assert_eq!(
            (
                s.pool.as_str(),
                s.namespace.as_str(),
                s.image.as_str(),
                s.snap
            ),
            ("rbd", "", "img", None)
        );
        let s = ImageSpec::parse("p/ns/img@s1", DEFAULT_POOL).unwrap();
        assert_eq!(
            (s.pool.as_str(), s.namespace.as_str(), s.image.as_str()),
            ("p", "ns", "img")
        );
        assert_eq!(s.snap.as_deref(), Some("s1"));
        assert_eq!(s.to_string(), "p/ns/img@s1");
        for bad in ["", "a/b/c/d", "p//img", "/img", "img@", "a@b@c", "p/"] {
            assert!(ImageSpec::parse(bad, DEFAULT_POOL).is_err(), "{bad}");
        }
    }
}
