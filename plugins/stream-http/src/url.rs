//! Just enough URL handling for object streams: split an `http[s]://` URL into parts, print
//! it without secrets, and resolve a relative reference (a qcow2 backing file name) against
//! it. No general URL library: the shapes we accept are few and must round-trip exactly,
//! because a signed request must name the path and query the way they were signed.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`, lower case.
    pub scheme: String,
    /// `user[:password]` before the host, kept for the request, never printed.
    pub userinfo: Option<String>,
    /// As written, `[...]` around an IPv6 address included.
    pub host: String,
    pub port: Option<u16>,
    /// Starts with `/`; as written (percent-escapes kept).
    pub path: String,
    /// Without the `?`; as written.
    pub query: Option<String>,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} is not an absolute URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("unsupported URL scheme {scheme:?} (http or https)"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("URL contains whitespace or control characters".into());
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (tail, None),
        };
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        Ok(Url {
            scheme,
            userinfo,
            host,
            port,
            path,
            query,
        })
    }

    fn default_port(&self) -> u16 {
        if self.scheme == "https" {
            443
        } else {
            80
        }
    }

    /// The `Host` header value: the port only when the URL gave a non-default one.
    pub fn host_header(&self) -> String {
        match self.port {
            Some(p) if p != self.default_port() => format!("{}:{p}", self.host),
            _ => self.host.clone(),
        }
    }

    /// Scheme, host (case-folded) and effective port: what must match for "same server".
    pub fn origin(&self) -> (String, String, u16) {
        (
            self.scheme.clone(),
            self.host.to_ascii_lowercase(),
            self.port.unwrap_or(self.default_port()),
        )
    }

    /// `path?query`, as sent on the request line.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// For messages: no userinfo, and a query (which may hold a signature) shown as `?…`.
    pub fn redacted(&self) -> String {
        let q = if self.query.is_some() { "?…" } else { "" };
        format!(
            "{}://{}{}{q}",
            self.scheme,
            self.host_with_port(),
            self.path
        )
    }

    fn host_with_port(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// Resolves `reference` against this URL as a browser would (RFC 3986 section 5), except
    /// that `..` above the root is an error instead of being dropped silently.
    pub fn join(&self, reference: &str) -> Result<Url, String> {
        if reference.is_empty() {
            return Err("empty reference".into());
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{reference:?} contains whitespace or control characters"
            ));
        }
        if reference.contains("://") {
            return Url::parse(reference);
        }
        if let Some(rest) = reference.strip_prefix("//") {
            return Url::parse(&format!("{}://{rest}", self.scheme));
        }
        let reference = reference.split('#').next().unwrap_or_default();
        let (path, query) = match reference.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (reference, None),
        };
        let merged = if path.starts_with('/') {
            path.to_string()
        } else if path.is_empty() {
            self.path.clone()
        } else {
            let dir = &self.path[..self.path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{path}")
        };
        let path = remove_dot_segments(&merged)?;
        Ok(Url {
            path,
            query,
            ..self.clone()
        })
    }
}

impl fmt::Display for Url {
    /// The full URL, secrets included: for the request only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self
            .userinfo
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        write!(
            f,
            "{}://{user}{}{}",
            self.scheme,
            self.host_with_port(),
            self.path_and_query()
        )
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if hostport.starts_with('[') {
        let end = hostport.find(']').ok_or("unterminated [IPv6] host")?;
        let after = &hostport[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after [IPv6] host")?),
        };
        (&hostport[..=end], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no host in URL".into());
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("bad port {p:?}"))?,
        ),
    };
    Ok((host.to_string(), port))
}

/// RFC 3986 5.2.4, refusing to climb above the root.
fn remove_dot_segments(path: &str) -> Result<String, String> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(format!("{path:?} climbs above the root"));
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// Decodes `%XX` escapes into bytes; a `%` not followed by two hex digits stays as is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let u = Url::parse("HTTP://user:pw@Example.com:8080/a/b.qcow2?sig=1&x=2#frag").unwrap();
        assert_eq!(u.scheme, "http");
        assert_eq!(u.userinfo.as_deref(), Some("user:pw"));
        assert_eq!(u.host, "Example.com");
        assert_eq!(u.port, Some(8080));
        assert_eq!(u.path, "/a/b.qcow2");
        assert_eq!(u.query.as_deref(), Some("sig=1&x=2"));
        assert_eq!(
            u.to_string(),
            "http://user:pw@Example.com:8080/a/b.qcow2?sig=1&x=2"
        );
        assert_eq!(u.redacted(), "http://Example.com:8080/a/b.qcow2?…");
        assert_eq!(u.host_header(), "Example.com:8080");
        assert_eq!(Url::parse("https://h:443/x").unwrap().host_header(), "h");
        let v6 = Url::parse("http://[::1]:81/x").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", Some(81)));
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        for bad in [
            "ftp://h/x",
            "h/x",
            "http:///x",
            "http://h:0/x",
            "http://h:x/",
            "http://[::1/x",
            "http://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn joins_like_a_browser_but_never_above_the_root() {
        let base = Url::parse("http://h:1/dir/sub/top.qcow2?sig=abc").unwrap();
        let j = |r: &str| base.join(r).map(|u| u.to_string());
        assert_eq!(j("base.qcow2").unwrap(), "http://h:1/dir/sub/base.qcow2");
        assert_eq!(j("../b?t=1").unwrap(), "http://h:1/dir/b?t=1");
        assert_eq!(j("./x/./y").unwrap(), "http://h:1/dir/sub/x/y");
        assert_eq!(j("/root").unwrap(), "http://h:1/root");
        assert_eq!(j("//other/x").unwrap(), "http://other/x");
        assert_eq!(j("https://o/x").unwrap(), "https://o/x");
        assert!(j("../../../etc/passwd").is_err());
        assert!(j("").is_err());
        assert!(j("a\nb").is_err());
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc%zz%"), b"a b/c%zz%");
    }
}
