//! Reading one JSON object field by field, remembering which fields were read so that any
//! other field is refused by name.

use serde_json::{Map, Value};

use crate::{quote, Result, SpecError};

/// `path.key`, or `key` at the root.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    pub fn new(v: &'a Value, path: &str) -> Result<Self> {
        let map = v
            .as_object()
            .ok_or_else(|| SpecError::new(path, "expected a JSON object"))?;
        Ok(Fields {
            map,
            path: path.to_string(),
            known: Vec::new(),
        })
    }

    pub fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key)
    }

    fn err(&self, key: &str, msg: impl Into<String>) -> SpecError {
        SpecError::new(self.child(key), msg)
    }

    pub fn required(&mut self, key: &'static str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    pub fn opt_string(&mut self, key: &'static str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(key, "expected a string")),
        }
    }

    pub fn string(&mut self, key: &'static str) -> Result<String> {
        self.opt_string(key)?
            .ok_or_else(|| self.err(key, "missing"))
    }

    /// An optional string that, when present, is not empty.
    pub fn opt_name(&mut self, key: &'static str) -> Result<Option<String>> {
        match self.opt_string(key)? {
            Some(s) if s.is_empty() => Err(self.err(key, "must not be empty")),
            other => Ok(other),
        }
    }

    pub fn name(&mut self, key: &'static str) -> Result<String> {
        self.opt_name(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    /// A credential: a non-empty string, or a `config://KEY` reference with a key.
    pub fn secret(&mut self, key: &'static str) -> Result<String> {
        let v = self.name(key)?;
        crate::check_secret(self, key, v)
    }

    /// An optional signed integer (pool ids are int64 in Ceph).
    pub fn opt_int(&mut self, key: &'static str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if i >= 0 => Ok(Some(i)),
                Some(_) => Err(self.err(key, "expected a non-negative integer")),
                None => Err(self.err(key, "expected an integer")),
            },
            Some(_) => Err(self.err(key, "expected an integer")),
        }
    }

    /// A snapshot id: a number or a string of decimal digits, as Ceph accepts it.
    pub fn opt_snap_id(&mut self, key: &'static str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(key, "expected a non-negative integer")),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map(Some)
                .map_err(|_| self.err(key, format!("snapshot id {} is out of range", quote(s)))),
            Some(_) => Err(self.err(key, "expected an integer or a numeric string")),
        }
    }

    pub fn opt_array(&mut self, key: &'static str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.err(key, "expected an array")),
        }
    }

    /// Refuses the first field that was never asked for (named by an excerpt: the key is
    /// the user's, of any length).
    pub fn finish(self) -> Result<()> {
        match self.map.keys().find(|k| !self.known.contains(&k.as_str())) {
            Some(k) if k.len() > 64 => Err(self.err(&quote(k), "unknown field")),
            Some(k) => Err(self.err(k, "unknown field")),
            None => Ok(()),
        }
    }
}
