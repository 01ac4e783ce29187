//! The source-spec JSON model: what a migration source is (`native`, `qcow`, `raw` with its
//! snapshot list) and what it is read through (`file`, `http`, `s3`, `nbd`), in the shapes of
//! Ceph's `rbd migration prepare --source-spec`.
//!
//! What it is for: parsing and validating a spec into typed values, with errors that name the
//! JSON path (`stream.file_path: missing`); serialising those values back; `config://KEY`
//! references; masking secrets for printing. Plugins parse their part through the typed
//! structs here (`FileStreamSpec::from_json`) so validation is written once.
//! What it is not: no I/O and no plugin lookup. A `type` this crate does not know is kept as
//! `Other` (a plugin may provide it); the registry reports it unsupported if none does.
#![forbid(unsafe_code)]

use serde_json::{Map, Value};

mod input;
mod nbd;
mod timeout;
mod walk;

pub use input::{check_len, quote, read_spec_text, InputError, MAX_SPEC_BYTES};
pub use nbd::NbdTarget;
pub use timeout::{
    stream_connect_timeout, stream_idle_timeout, timed_out_error, DEFAULT_IDLE_TIMEOUT,
    STREAM_TIMEOUT_ENV,
};
use walk::{join, Fields};

/// A spec that cannot be used, and where in the JSON the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// Dotted path of the offending value (`snapshots[1].stream.url`); empty for the root.
    pub path: String,
    pub msg: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.msg)
        } else {
            write!(f, "{}: {}", self.path, self.msg)
        }
    }
}

impl SpecError {
    pub fn new(path: impl Into<String>, msg: impl Into<String>) -> Self {
        SpecError {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = SpecError> = std::result::Result<T, E>;

/// The prefix of a value that names a key in the store's config-key store.
pub const CONFIG_PREFIX: &str = "config://";

/// The config-key a value refers to, if it is a `config://KEY` reference.
pub fn config_ref(value: &str) -> Option<&str> {
    value.strip_prefix(CONFIG_PREFIX)
}

/// The value itself, or what `lookup` returns for a `config://KEY` reference.
pub fn resolve_config<E>(
    value: &str,
    lookup: &dyn Fn(&str) -> Result<String, E>,
) -> Result<String, E> {
    match config_ref(value) {
        Some(key) => lookup(key),
        None => Ok(value.to_string()),
    }
}

/// Keys whose values are credentials: never printed.
pub const SECRET_KEYS: &[&str] = &["access_key", "secret_key", "session_token", "password"];

/// A copy of `spec` fit for printing: every credential (at any depth) becomes `"***"`.
/// `config://` references stay visible: they name a key, they are not the secret.
pub fn mask_secrets(spec: &Value) -> Value {
    match spec {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let hide = SECRET_KEYS.contains(&k.as_str())
                        && v.as_str().is_none_or(|s| config_ref(s).is_none());
                    (
                        k.clone(),
                        if hide {
                            Value::from("***")
                        } else {
                            mask_secrets(v)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask_secrets).collect()),
        other => other.clone(),
    }
}

/// A whole source-spec: the top-level format.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    Native(NativeSpec),
    Qcow(QcowSpec),
    Raw(RawSpec),
    /// A format this crate does not know: only its `type` was checked.
    Other {
        type_name: String,
        json: Value,
    },
}

impl SourceSpec {
    /// Parses JSON text: too long, malformed JSON and invalid specs are all a `SpecError`.
    pub fn parse(text: &str) -> Result<Self> {
        check_len(text.len()).map_err(|e| SpecError::new("", e.to_string()))?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| SpecError::new("", format!("malformed JSON: {e}")))?;
        Self::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let t = type_of(v, "")?;
        match t {
            "native" => NativeSpec::from_json(v, "").map(SourceSpec::Native),
            "qcow" => QcowSpec::from_json(v, "").map(SourceSpec::Qcow),
            "raw" => RawSpec::from_json(v, "").map(SourceSpec::Raw),
            other => Ok(SourceSpec::Other {
                type_name: other.to_string(),
                json: v.clone(),
            }),
        }
    }

    /// What an import (`--import-only`) needs beyond a valid spec: a `native` source names a
    /// snapshot, so the source cannot change under the import (librbd refuses it alike).
    /// Same-store migrations read their source as a `native` spec at its head; they do not
    /// come through here.
    pub fn check_import(&self) -> Result<()> {
        match self {
            SourceSpec::Native(n) if n.snap.is_none() => Err(SpecError::new(
                "",
                "snapshot required for import (give snap_name or snap_id)",
            )),
            _ => Ok(()),
        }
    }

    pub fn type_name(&self) -> &str {
        match self {
            SourceSpec::Native(_) => "native",
            SourceSpec::Qcow(_) => "qcow",
            SourceSpec::Raw(_) => "raw",
            SourceSpec::Other { type_name, .. } => type_name,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            SourceSpec::Native(s) => s.to_json(),
            SourceSpec::Qcow(s) => s.to_json(),
            SourceSpec::Raw(s) => s.to_json(),
            SourceSpec::Other { json, .. } => json.clone(),
        }
    }
}

/// The `type` of the object at `path`: present and a string.
pub fn type_of<'a>(v: &'a Value, path: &str) -> Result<&'a str> {
    let obj = v
        .as_object()
        .ok_or_else(|| SpecError::new(path, "expected a JSON object"))?;
    match obj.get("type") {
        Some(Value::String(t)) if is_type_name(t) => Ok(t),
        Some(Value::String(t)) if t.is_empty() => {
            Err(SpecError::new(join(path, "type"), "must not be empty"))
        }
        // Checked here so no later message (an unknown type) echoes a huge or odd value.
        Some(Value::String(t)) => Err(SpecError::new(
            join(path, "type"),
            format!(
                "{} is not a type name (letters, digits, '-', '_', '+'; at most 64)",
                quote(t)
            ),
        )),
        Some(_) => Err(SpecError::new(join(path, "type"), "expected a string")),
        None => Err(SpecError::new(join(path, "type"), "missing")),
    }
}

fn is_type_name(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+".contains(&b))
}

fn expect_type(f: &mut Fields, want: &str) -> Result<()> {
    let t = f.string("type")?;
    if t == want {
        return Ok(());
    }
    Err(SpecError::new(
        f.child("type"),
        format!("expected {want:?}, got {}", quote(&t)),
    ))
}

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<_, _>>(),
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolRef {
    Name(String),
    Id(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapRef {
    Name(String),
    Id(u64),
}

/// `{"type":"native","pool_name"|"pool_id","pool_namespace"?,"image_name","image_id"?,
/// "snap_name"|"snap_id"?}`; a snap id may be a number or a numeric string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeSpec {
    pub pool: PoolRef,
    /// Empty: the default namespace.
    pub pool_namespace: String,
    pub image_name: String,
    /// Finds the image in the trash too.
    pub image_id: Option<String>,
    /// `None`: the image's head.
    pub snap: Option<SnapRef>,
}

impl NativeSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "native")?;
        let pool = match (f.opt_name("pool_name")?, f.opt_int("pool_id")?) {
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    f.child("pool_id"),
                    "both pool_name and pool_id given",
                ))
            }
            (Some(n), None) => PoolRef::Name(n),
            (None, Some(id)) => PoolRef::Id(id),
            (None, None) => {
                return Err(SpecError::new(
                    f.child("pool_name"),
                    "missing (give pool_name or pool_id)",
                ))
            }
        };
        let pool_namespace = f.opt_string("pool_namespace")?.unwrap_or_default();
        let image_name = f.name("image_name")?;
        let image_id = f.opt_name("image_id")?;
        let snap = match (f.opt_name("snap_name")?, f.opt_snap_id("snap_id")?) {
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    f.child("snap_id"),
                    "both snap_name and snap_id given",
                ))
            }
            (Some(n), None) => Some(SnapRef::Name(n)),
            (None, Some(id)) => Some(SnapRef::Id(id)),
            (None, None) => None,
        };
        f.finish()?;
        Ok(NativeSpec {
            pool,
            pool_namespace,
            image_name,
            image_id,
            snap,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut m = vec![("type", Value::from("native"))];
        m.push(match &self.pool {
            PoolRef::Name(n) => ("pool_name", Value::from(n.as_str())),
            PoolRef::Id(id) => ("pool_id", Value::from(*id)),
        });
        if !self.pool_namespace.is_empty() {
            m.push(("pool_namespace", Value::from(self.pool_namespace.as_str())));
        }
        m.push(("image_name", Value::from(self.image_name.as_str())));
        if let Some(id) = &self.image_id {
            m.push(("image_id", Value::from(id.as_str())));
        }
        match &self.snap {
            Some(SnapRef::Name(n)) => m.push(("snap_name", Value::from(n.as_str()))),
            Some(SnapRef::Id(id)) => m.push(("snap_id", Value::from(*id))),
            None => {}
        }
        obj(m)
    }
}

/// `{"type":"qcow","stream":{...}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct QcowSpec {
    pub stream: StreamSpec,
}

impl QcowSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "qcow")?;
        let stream = StreamSpec::from_json(f.required("stream")?, &f.child("stream"))?;
        f.finish()?;
        Ok(QcowSpec { stream })
    }

    pub fn to_json(&self) -> Value {
        obj(vec![
            ("type", Value::from("qcow")),
            ("stream", self.stream.to_json()),
        ])
    }
}

/// `{"type":"raw","stream":{...},"snapshots":[{"type":"raw","name":"...","stream":{...}}, ...]}`
/// with snapshots oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSpec {
    pub stream: StreamSpec,
    pub snapshots: Vec<RawSnapSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RawSnapSpec {
    pub name: String,
    pub stream: StreamSpec,
}

impl RawSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "raw")?;
        let stream = StreamSpec::from_json(f.required("stream")?, &f.child("stream"))?;
        let mut snapshots: Vec<RawSnapSpec> = Vec::new();
        if let Some(list) = f.opt_array("snapshots")? {
            for (i, item) in list.iter().enumerate() {
                let p = format!("{}[{i}]", f.child("snapshots"));
                let snap = RawSnapSpec::from_json(item, &p)?;
                if snapshots.iter().any(|s| s.name == snap.name) {
                    return Err(SpecError::new(
                        join(&p, "name"),
                        format!("duplicate snapshot name {}", quote(&snap.name)),
                    ));
                }
                snapshots.push(snap);
            }
        }
        f.finish()?;
        Ok(RawSpec { stream, snapshots })
    }

    pub fn to_json(&self) -> Value {
        let mut m = vec![
            ("type", Value::from("raw")),
            ("stream", self.stream.to_json()),
        ];
        if !self.snapshots.is_empty() {
            m.push((
                "snapshots",
                Value::Array(self.snapshots.iter().map(RawSnapSpec::to_json).collect()),
            ));
        }
        obj(m)
    }
}

impl RawSnapSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "raw")?;
        let name = f.name("name")?;
        let stream = StreamSpec::from_json(f.required("stream")?, &f.child("stream"))?;
        f.finish()?;
        Ok(RawSnapSpec { name, stream })
    }

    pub fn to_json(&self) -> Value {
        obj(vec![
            ("type", Value::from("raw")),
            ("name", Value::from(self.name.as_str())),
            ("stream", self.stream.to_json()),
        ])
    }
}

/// A stream object: `{"type": ..., ...}` inside a format.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamSpec {
    File(FileStreamSpec),
    Http(HttpStreamSpec),
    S3(S3StreamSpec),
    Nbd(NbdStreamSpec),
    /// A stream type this crate does not know: only its `type` was checked.
    Other {
        type_name: String,
        json: Value,
    },
}

impl StreamSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        match type_of(v, path)? {
            "file" => FileStreamSpec::from_json(v, path).map(StreamSpec::File),
            "http" => HttpStreamSpec::from_json(v, path).map(StreamSpec::Http),
            "s3" => S3StreamSpec::from_json(v, path).map(StreamSpec::S3),
            "nbd" => NbdStreamSpec::from_json(v, path).map(StreamSpec::Nbd),
            other => Ok(StreamSpec::Other {
                type_name: other.to_string(),
                json: v.clone(),
            }),
        }
    }

    pub fn type_name(&self) -> &str {
        match self {
            StreamSpec::File(_) => "file",
            StreamSpec::Http(_) => "http",
            StreamSpec::S3(_) => "s3",
            StreamSpec::Nbd(_) => "nbd",
            StreamSpec::Other { type_name, .. } => type_name,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            StreamSpec::File(s) => s.to_json(),
            StreamSpec::Http(s) => s.to_json(),
            StreamSpec::S3(s) => s.to_json(),
            StreamSpec::Nbd(s) => s.to_json(),
            StreamSpec::Other { json, .. } => json.clone(),
        }
    }
}

/// `{"type":"file","file_path":"..."}`: a relative path is relative to the working directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStreamSpec {
    pub file_path: String,
}

impl FileStreamSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "file")?;
        let file_path = f.name("file_path")?;
        if file_path.contains('\0') {
            return Err(SpecError::new(f.child("file_path"), "contains a NUL byte"));
        }
        f.finish()?;
        Ok(FileStreamSpec { file_path })
    }

    pub fn to_json(&self) -> Value {
        obj(vec![
            ("type", Value::from("file")),
            ("file_path", Value::from(self.file_path.as_str())),
        ])
    }
}

/// `{"type":"http","url":"http[s]://..."}`; the query string is part of the URL and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpStreamSpec {
    pub url: String,
}

impl HttpStreamSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "http")?;
        let url = f.name("url")?;
        check_http_url(&url).map_err(|m| SpecError::new(f.child("url"), m))?;
        f.finish()?;
        Ok(HttpStreamSpec { url })
    }

    pub fn to_json(&self) -> Value {
        obj(vec![
            ("type", Value::from("http")),
            ("url", Value::from(self.url.as_str())),
        ])
    }
}

/// `http://host[:port]/...` or `https://...` with a host: enough to refuse a typo early;
/// the http client does the full parse.
fn check_http_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {}", quote(url)))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("no host in URL {}", quote(url)));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "URL {} contains whitespace or control characters",
            quote(url)
        ));
    }
    Ok(())
}

/// `{"type":"s3","url":"http[s]://host[:port]/bucket/key","access_key":"...","secret_key":"...",
/// "region"?,"session_token"?}` (path-style URL). Keys and the token may be `config://KEY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3StreamSpec {
    pub url: String,
    pub access_key: String,
    pub secret_key: String,
    /// `None`: the client's default (`us-east-1`, as radosgw and most servers accept).
    pub region: Option<String>,
    pub session_token: Option<String>,
}

impl S3StreamSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "s3")?;
        let url = f.name("url")?;
        check_http_url(&url).map_err(|m| SpecError::new(f.child("url"), m))?;
        let access_key = f.secret("access_key")?;
        let secret_key = f.secret("secret_key")?;
        let region = f.opt_name("region")?;
        let session_token = match f.opt_name("session_token")? {
            Some(t) => Some(check_secret(&f, "session_token", t)?),
            None => None,
        };
        f.finish()?;
        Ok(S3StreamSpec {
            url,
            access_key,
            secret_key,
            region,
            session_token,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut m = vec![
            ("type", Value::from("s3")),
            ("url", Value::from(self.url.as_str())),
            ("access_key", Value::from(self.access_key.as_str())),
            ("secret_key", Value::from(self.secret_key.as_str())),
        ];
        if let Some(r) = &self.region {
            m.push(("region", Value::from(r.as_str())));
        }
        if let Some(t) = &self.session_token {
            m.push(("session_token", Value::from(t.as_str())));
        }
        obj(m)
    }
}

fn check_secret(f: &Fields, key: &str, value: String) -> Result<String> {
    if config_ref(&value) == Some("") {
        return Err(SpecError::new(
            f.child(key),
            "config:// reference names no key",
        ));
    }
    Ok(value)
}

/// `{"type":"nbd","uri":"nbd://host[:port]/export" | "nbd+unix:///export?socket=PATH"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdStreamSpec {
    pub uri: String,
    /// The parsed `uri`.
    pub target: NbdTarget,
}

impl NbdStreamSpec {
    pub fn from_json(v: &Value, path: &str) -> Result<Self> {
        let mut f = Fields::new(v, path)?;
        expect_type(&mut f, "nbd")?;
        let uri = f.name("uri")?;
        let target = NbdTarget::parse(&uri).map_err(|m| SpecError::new(f.child("uri"), m))?;
        f.finish()?;
        Ok(NbdStreamSpec { uri, target })
    }

    pub fn to_json(&self) -> Value {
        obj(vec![
            ("type", Value::from("nbd")),
            ("uri", Value::from(self.uri.as_str())),
        ])
    }
}

#[cfg(test)]
mod tests;
