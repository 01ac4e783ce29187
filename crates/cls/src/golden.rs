//! Parser of the golden dump text `golden/capture.sh` writes: per object its data (hex or a
//! sha256), xattrs and omap values as exact bytes.

use std::fmt;

/// An object's data as dumped: small data in full, larger only as a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoldenData {
    Bytes(Vec<u8>),
    Sha256 { len: u64, hex: String },
}

/// One object of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenObject {
    pub namespace: String,
    pub name: String,
    pub data: GoldenData,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub omap: Vec<(String, Vec<u8>)>,
}

/// A malformed dump line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenError {
    pub line: usize,
    pub what: String,
}

impl fmt::Display for GoldenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "golden dump line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for GoldenError {}

/// Parses a whole dump; `#` lines are comments.
pub fn parse(text: &str) -> Result<Vec<GoldenObject>, GoldenError> {
    let mut objects: Vec<GoldenObject> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |what: &str| GoldenError {
            line: i + 1,
            what: what.to_owned(),
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line.split_once(' ').ok_or_else(|| err("no value"))?;
        if tag == "object" {
            let (namespace, name) = rest.split_once('/').ok_or_else(|| err("no namespace/"))?;
            objects.push(GoldenObject {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                data: GoldenData::Bytes(Vec::new()),
                xattrs: Vec::new(),
                omap: Vec::new(),
            });
            continue;
        }
        let obj = objects
            .last_mut()
            .ok_or_else(|| err("record before any object"))?;
        let (first, value) = rest.split_once(' ').unwrap_or((rest, ""));
        match tag {
            "data" => obj.data = parse_data(first, value).map_err(|w| err(&w))?,
            "xattr" => obj
                .xattrs
                .push((first.to_owned(), hex(value).map_err(|w| err(&w))?)),
            "omap" => obj
                .omap
                .push((first.to_owned(), hex(value).map_err(|w| err(&w))?)),
            _ => return Err(err("unknown record tag")),
        }
    }
    Ok(objects)
}

fn parse_data(len: &str, value: &str) -> Result<GoldenData, String> {
    let len: u64 = len.parse().map_err(|_| format!("bad data length {len}"))?;
    if let Some(digest) = value.strip_prefix("sha256:") {
        return Ok(GoldenData::Sha256 {
            len,
            hex: digest.to_owned(),
        });
    }
    let bytes = hex(value)?;
    if bytes.len() as u64 != len {
        return Err(format!("data length {len} but {} bytes", bytes.len()));
    }
    Ok(GoldenData::Bytes(bytes))
}

/// Lower- or upper-case hex to bytes.
pub fn hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("bad hex at {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_and_records() {
        let text = "# c\nobject ns/rbd_id.a\ndata 2 0102\nxattr lock.x 00\nomap k \n\
                    object /big\ndata 99 sha256:ab\n";
        let objs = parse(text).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].namespace, "ns");
        assert_eq!(objs[0].data, GoldenData::Bytes(vec![1, 2]));
        assert_eq!(objs[0].omap, [("k".to_string(), vec![])]);
        assert!(matches!(objs[1].data, GoldenData::Sha256 { len: 99, .. }));
    }

    #[test]
    fn bad_lines_name_the_line() {
        assert_eq!(parse("data 1 00").unwrap_err().line, 1);
        assert_eq!(parse("object /a\ndata 2 00").unwrap_err().line, 2);
        assert!(parse("object /a\nomap k 0").is_err());
    }
}
