//! NBD URIs as libnbd's `nbd_connect_uri` reads them (the NBD project's URI spec):
//! `nbd://[host][:port][/export]` and `nbd+unix:///[export]?socket=PATH`. An empty host is
//! `localhost`, an absent port 10809, the export the path without its leading `/` (empty when
//! there is no path); export names and socket paths are percent-decoded.
//! What it is not: no TLS (`nbds://`), no vsock, no user names; each is refused by name.

use crate::quote;

/// Where an NBD export is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdTarget {
    Tcp {
        host: String,
        port: u16,
        export: String,
    },
    Unix {
        socket: String,
        export: String,
    },
}

/// The NBD port registered with IANA, used when a URI names none.
pub const DEFAULT_PORT: u16 = 10809;

impl NbdTarget {
    pub fn parse(uri: &str) -> Result<Self, String> {
        if let Some(rest) = uri.strip_prefix("nbd://") {
            return parse_tcp(rest);
        }
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            return parse_unix(rest);
        }
        if uri.starts_with("nbds") {
            return Err(format!("{}: NBD over TLS is not supported", quote(uri)));
        }
        if uri.starts_with("nbd+vsock:") {
            return Err(format!("{}: NBD over vsock is not supported", quote(uri)));
        }
        Err(format!(
            "expected nbd://[host][:port][/export] or nbd+unix:///[export]?socket=PATH, got {}",
            quote(uri)
        ))
    }

    pub fn export(&self) -> &str {
        match self {
            NbdTarget::Tcp { export, .. } | NbdTarget::Unix { export, .. } => export,
        }
    }
}

fn parse_tcp(rest: &str) -> Result<NbdTarget, String> {
    if rest.contains('?') || rest.contains('#') {
        return Err("nbd:// URIs take no query".into());
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = split_host_port(authority)?;
    Ok(NbdTarget::Tcp {
        host,
        port,
        export: decode(path)?,
    })
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    if authority.contains('@') {
        return Err("user names in NBD URIs (for TLS) are not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unterminated [IPv6] host")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after [IPv6] host")?),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    // As libnbd: no host means this machine.
    let host = if host.is_empty() { "localhost" } else { host };
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("bad port {}", quote(p)))?,
    };
    Ok((host.to_string(), port))
}

fn parse_unix(rest: &str) -> Result<NbdTarget, String> {
    let (before, query) = rest
        .split_once('?')
        .ok_or("nbd+unix:// needs ?socket=PATH")?;
    let path = before
        .strip_prefix('/')
        .ok_or("nbd+unix:// takes no host: write nbd+unix:///export?socket=PATH")?;
    let mut socket = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("socket", v)) if socket.is_none() => socket = Some(decode(v)?),
            Some(("socket", _)) => return Err("socket given twice".into()),
            _ => {
                return Err(format!(
                    "unknown query parameter {} (only socket=PATH)",
                    quote(pair)
                ))
            }
        }
    }
    let socket = socket
        .filter(|s| !s.is_empty())
        .ok_or("nbd+unix:// needs ?socket=PATH")?;
    Ok(NbdTarget::Unix {
        socket,
        export: decode(path)?,
    })
}

/// Percent-decoding; the result must be UTF-8 (export names are strings in NBD).
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let b = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {}", quote(s)))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{} does not decode to UTF-8", quote(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_forms() {
        assert_eq!(
            NbdTarget::parse("nbd://localhost:10810/disk%20a"),
            Ok(NbdTarget::Tcp {
                host: "localhost".into(),
                port: 10810,
                export: "disk a".into()
            })
        );
        assert_eq!(
            NbdTarget::parse("nbd://[::1]/x"),
            Ok(NbdTarget::Tcp {
                host: "::1".into(),
                port: DEFAULT_PORT,
                export: "x".into()
            })
        );
        assert_eq!(
            NbdTarget::parse("nbd://h"),
            Ok(NbdTarget::Tcp {
                host: "h".into(),
                port: DEFAULT_PORT,
                export: "".into()
            })
        );
        assert_eq!(
            NbdTarget::parse("nbd+unix:///exp?socket=/run/a%2Bb.sock"),
            Ok(NbdTarget::Unix {
                socket: "/run/a+b.sock".into(),
                export: "exp".into()
            })
        );
        // libnbd's defaults: an empty host is localhost, no port 10809, no path export "".
        for (uri, port, export) in [
            ("nbd://", DEFAULT_PORT, ""),
            ("nbd:///", DEFAULT_PORT, ""),
            ("nbd:///myexport", DEFAULT_PORT, "myexport"),
            ("nbd://:10810/x", 10810, "x"),
            ("nbd://:/x", DEFAULT_PORT, "x"),
            ("nbd://localhost/myexport", DEFAULT_PORT, "myexport"),
        ] {
            assert_eq!(
                NbdTarget::parse(uri),
                Ok(NbdTarget::Tcp {
                    host: "localhost".into(),
                    port,
                    export: export.into()
                }),
                "{uri}"
            );
        }
        assert_eq!(
            NbdTarget::parse("nbd+unix:///?socket=/s"),
            Ok(NbdTarget::Unix {
                socket: "/s".into(),
                export: "".into()
            })
        );
        for bad in [
            "",
            "foo.example.com",
            "nbds://h/e",
            "nbd+vsock:///",
            "nbd://user@h/e",
            "nbd://h:0/x",
            "nbd://h:99999/x",
            "nbd://h:x/e",
            "nbd://[::1/x",
            "nbd://h/x?y=1",
            "nbd+unix:///e",
            "nbd+unix://host/e?socket=/s",
            "nbd+unix:///e?socket=",
            "nbd+unix:///e?sock=/s",
            "nbd://h/%zz",
            "nbd://h/%ff",
            "http://h/e",
        ] {
            assert!(NbdTarget::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
