//! One value tree for `--format json` and `--format xml`, rendered the way Ceph's
//! `JSONFormatter` and `XMLFormatter` render what `rbd` dumps into them, so the two formats
//! can never disagree.
//!
//! Ceph's formatters are driven by named sections: an object section `snapshot` is `{...}` in
//! JSON and `<snapshot>...</snapshot>` in XML; an array section `snapshots` is `[...]` in JSON
//! and `<snapshots>...</snapshots>` in XML, its items each being an element of their own name
//! (`<snapshot>`, or `<name>` for an array of strings). JSON drops the names of array items
//! and of the root; XML needs them all, so a `List` carries its item name and the root is
//! named when it is printed.

use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub enum Doc {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// Keys in the order rbd dumps them.
    Obj(Vec<(String, Doc)>),
    /// Items, each with its XML element name (rbd's `ls -l` mixes `image` and `snapshot`).
    List(Vec<(String, Doc)>),
}

/// `obj!{"id" => 4, "name" => "s"}`: an object whose keys keep the written order.
#[macro_export]
macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {
        $crate::doc::Doc::Obj(vec![$(($k.to_string(), $crate::doc::Doc::from($v))),*])
    };
}

impl Doc {
    /// A list whose items are each named `item` in XML.
    pub fn list<T: Into<Doc>>(item: &str, items: impl IntoIterator<Item = T>) -> Doc {
        Doc::List(
            items
                .into_iter()
                .map(|v| (item.to_string(), v.into()))
                .collect(),
        )
    }

    /// An empty list, for items pushed one by one with their names.
    pub fn empty_list() -> Doc {
        Doc::List(Vec::new())
    }

    /// Appends an item named `item` to a list; a no-op on anything else.
    pub fn push(&mut self, item: &str, v: impl Into<Doc>) {
        if let Doc::List(items) = self {
            items.push((item.to_string(), v.into()));
        }
    }

    /// Adds (or replaces) a key of an object; a no-op on anything else.
    pub fn set(&mut self, key: &str, v: impl Into<Doc>) {
        if let Doc::Obj(fields) = self {
            let v = v.into();
            match fields.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = v,
                None => fields.push((key.to_string(), v)),
            }
        }
    }

    /// The value of a key of an object.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Doc> {
        match self {
            Doc::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// JSON as `JSONFormatter` writes it: compact, or indented by four spaces.
    pub fn to_json(&self, pretty: bool) -> String {
        let mut out = String::new();
        json(self, pretty, 0, &mut out);
        out
    }

    /// XML as `XMLFormatter` writes it, the root element named `root`: no declaration; when
    /// pretty, one element a line, indented by one space a level, each line ending in `\n`.
    pub fn to_xml(&self, root: &str, pretty: bool) -> String {
        let mut out = String::new();
        xml(root, self, pretty, 0, &mut out);
        out
    }
}

impl From<bool> for Doc {
    fn from(v: bool) -> Self {
        Doc::Bool(v)
    }
}
impl From<u64> for Doc {
    fn from(v: u64) -> Self {
        Doc::UInt(v)
    }
}
impl From<u32> for Doc {
    fn from(v: u32) -> Self {
        Doc::UInt(v.into())
    }
}
impl From<u8> for Doc {
    fn from(v: u8) -> Self {
        Doc::UInt(v.into())
    }
}
impl From<usize> for Doc {
    fn from(v: usize) -> Self {
        Doc::UInt(v as u64)
    }
}
impl From<i64> for Doc {
    fn from(v: i64) -> Self {
        Doc::Int(v)
    }
}
impl From<i32> for Doc {
    fn from(v: i32) -> Self {
        Doc::Int(v.into())
    }
}
impl From<f64> for Doc {
    fn from(v: f64) -> Self {
        Doc::Float(v)
    }
}
impl From<&str> for Doc {
    fn from(v: &str) -> Self {
        Doc::Str(v.to_string())
    }
}
impl From<String> for Doc {
    fn from(v: String) -> Self {
        Doc::Str(v)
    }
}
impl From<&String> for Doc {
    fn from(v: &String) -> Self {
        Doc::Str(v.clone())
    }
}

fn scalar(d: &Doc) -> Option<String> {
    match d {
        Doc::Bool(b) => Some(b.to_string()),
        Doc::Int(n) => Some(n.to_string()),
        Doc::UInt(n) => Some(n.to_string()),
        Doc::Float(f) => Some(f.to_string()),
        Doc::Str(s) => Some(s.clone()),
        Doc::Obj(_) | Doc::List(_) => None,
    }
}

fn newline_indent(pretty: bool, level: usize, out: &mut String) {
    if pretty {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', level * 4));
    }
}

fn json(d: &Doc, pretty: bool, level: usize, out: &mut String) {
    let (open, close, entries): (char, char, Vec<(Option<&str>, &Doc)>) = match d {
        Doc::Str(s) => return json_string(s, out),
        Doc::Obj(fields) => (
            '{',
            '}',
            fields.iter().map(|(k, v)| (Some(k.as_str()), v)).collect(),
        ),
        Doc::List(items) => ('[', ']', items.iter().map(|(_, v)| (None, v)).collect()),
        other => return out.push_str(&scalar(other).unwrap_or_default()),
    };
    out.push(open);
    for (i, (key, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        newline_indent(pretty, level + 1, out);
        if let Some(k) = key {
            json_string(k, out);
            out.push_str(if pretty { ": " } else { ":" });
        }
        json(v, pretty, level + 1, out);
    }
    if !entries.is_empty() {
        newline_indent(pretty, level, out);
    }
    out.push(close);
}

/// JSON string escaping as Ceph's `json_stream_escaper`: quotes, backslashes, `\n`, `\t`,
/// other control characters as `\uXXXX`.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One element a line when pretty (every line ends in a newline, empty sections too), as
/// `XMLFormatter` prints them.
fn xml(name: &str, d: &Doc, pretty: bool, level: usize, out: &mut String) {
    let tag = xml_name(name);
    let indent = if pretty { level } else { 0 };
    let nl = if pretty { "\n" } else { "" };
    out.extend(std::iter::repeat_n(' ', indent));
    let children = match d {
        Doc::Obj(fields) | Doc::List(fields) => fields.as_slice(),
        scalar_doc => {
            let text = scalar(scalar_doc).unwrap_or_default();
            let _ = write!(out, "<{tag}>{}</{tag}>{nl}", xml_escape(&text));
            return;
        }
    };
    let _ = write!(out, "<{tag}>{nl}");
    for (k, v) in children {
        xml(k, v, pretty, level + 1, out);
    }
    out.extend(std::iter::repeat_n(' ', indent));
    let _ = write!(out, "</{tag}>{nl}");
}

/// `XMLFormatter` (underscored): a space in a name becomes `_`.
fn xml_name(name: &str) -> String {
    name.replace(' ', "_")
}

/// Ceph's `xml_stream_escaper`: the five entities, control characters as `&#xNN;`.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {
                let _ = write!(out, "&#x{:02x};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snaps() -> Doc {
        Doc::list(
            "snapshot",
            [obj! {"id" => 4u64, "name" => "2", "protected" => "false"}],
        )
    }

    #[test]
    fn json_compact_and_pretty() {
        let d = snaps();
        assert_eq!(
            d.to_json(false),
            r#"[{"id":4,"name":"2","protected":"false"}]"#
        );
        assert_eq!(
            d.to_json(true),
            "[\n    {\n        \"id\": 4,\n        \"name\": \"2\",\n        \"protected\": \"false\"\n    }\n]"
        );
        assert_eq!(Doc::list("x", Vec::<Doc>::new()).to_json(true), "[]");
    }

    #[test]
    fn xml_names_items_and_escapes() {
        let d = snaps();
        assert_eq!(
            d.to_xml("snapshots", false),
            "<snapshots><snapshot><id>4</id><name>2</name><protected>false</protected></snapshot></snapshots>"
        );
        let names = Doc::list("name", ["a<&>'\"b"]);
        assert_eq!(
            names.to_xml("images", false),
            "<images><name>a&lt;&amp;&gt;&apos;&quot;b</name></images>"
        );
        assert_eq!(
            Doc::list("name", ["a"]).to_xml("images", true),
            "<images>\n <name>a</name>\n</images>\n"
        );
    }

    /// Lines of `rbd info kid1 --format xml|json --pretty-format` (Ceph 16.2.15), keeping
    /// one of each shape: a scalar, a list, an empty list, a nested object.
    #[test]
    fn pretty_shapes_as_ceph_prints_them() {
        let d = obj! {
            "name" => "kid1",
            "features" => Doc::list("feature", ["layering", "exclusive-lock"]),
            "op_features" => Doc::list("op_feature", Vec::<Doc>::new()),
            "parent" => obj! {"pool" => "rbd", "pool_namespace" => "", "trash" => false},
        };
        let ceph_xml = "<image>\n <name>kid1</name>\n <features>\n  <feature>layering</feature>\n  \
            <feature>exclusive-lock</feature>\n </features>\n <op_features>\n </op_features>\n \
            <parent>\n  <pool>rbd</pool>\n  <pool_namespace></pool_namespace>\n  <trash>false</trash>\n \
            </parent>\n</image>\n";
        assert_eq!(d.to_xml("image", true), ceph_xml);
        let ceph_json = "{\n    \"name\": \"kid1\",\n    \"features\": [\n        \"layering\",\n        \
            \"exclusive-lock\"\n    ],\n    \"op_features\": [],\n    \"parent\": {\n        \
            \"pool\": \"rbd\",\n        \"pool_namespace\": \"\",\n        \"trash\": false\n    }\n}";
        assert_eq!(d.to_json(true), ceph_json);
        assert_eq!(
            d.to_xml("image", false),
            "<image><name>kid1</name><features><feature>layering</feature><feature>exclusive-lock\
            </feature></features><op_features></op_features><parent><pool>rbd</pool>\
            <pool_namespace></pool_namespace><trash>false</trash></parent></image>"
        );
    }

    #[test]
    fn json_escapes_like_ceph() {
        // As rbd printed metadata value "v<1>&\"x\"/y" and "a\nb\tc\x01d".
        assert_eq!(
            Doc::from("v<1>&\"x\"/y").to_json(false),
            r#""v<1>&\"x\"/y""#
        );
        assert_eq!(
            Doc::from("a\nb\tc\u{1}d").to_json(false),
            r#""a\nb\tc\u0001d""#
        );
        assert_eq!(
            Doc::from("a\nb\tc\u{1}d").to_xml("k3", false),
            "<k3>a\nb\tc&#x01;d</k3>"
        );
    }
}
