//! AWS Signature Version 4 for S3 requests without a body (GET, HEAD), header-signed.
//! Written here because the `s3` crates do not build or drag in an async stack (NOTES.md).

use hmac::{Hmac, Mac};
use rbdm_registry::Result;
use rbdm_stream_http::url::{percent_decode, Url};
use rbdm_stream_http::Signer;
use sha2::{Digest, Sha256};

/// sha256 of the empty payload: what a GET or HEAD carries.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub struct SigV4 {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub session_token: Option<String>,
}

impl Signer for SigV4 {
    /// Sends the path and query in the canonical form they are signed in, so a server that
    /// re-derives the canonical request from the raw request line agrees with one that
    /// decodes and re-encodes it.
    fn canonical_url(&self, mut url: Url) -> Url {
        url.path = canonical_uri(&url.path);
        url.query = url
            .query
            .map(|q| canonical_query(&q))
            .filter(|q| !q.is_empty());
        url
    }

    fn sign(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
    ) -> Result<Vec<(String, String)>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(self.headers_at(method, url, headers, EMPTY_SHA256, now))
    }
}

impl SigV4 {
    /// The headers to add (`host`, `x-amz-*`, `authorization`) for a request at `unix_time`.
    /// `own` are headers the request already carries; they are signed too.
    pub fn headers_at(
        &self,
        method: &str,
        url: &Url,
        own: &[(&str, String)],
        payload_hash: &str,
        unix_time: u64,
    ) -> Vec<(String, String)> {
        let amz_date = amz_date(unix_time);
        let day = &amz_date[..8];
        let mut added = vec![
            ("host".to_string(), url.host_header()),
            ("x-amz-content-sha256".to_string(), payload_hash.to_string()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        if let Some(t) = &self.session_token {
            added.push(("x-amz-security-token".to_string(), t.clone()));
        }
        let mut signed: Vec<(String, String)> = added
            .iter()
            .cloned()
            .chain(own.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())))
            .map(|(k, v)| (k, v.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect();
        signed.sort();
        let names = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let header_block: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let canonical = format!(
            "{method}\n{}\n{}\n{header_block}\n{names}\n{payload_hash}",
            canonical_uri(&url.path),
            canonical_query(url.query.as_deref().unwrap_or(""))
        );
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(
            format!("AWS4{}", self.secret_key).as_bytes(),
            day.as_bytes(),
        );
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        added.push((
            "authorization".to_string(),
            format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}", self.access_key),
        ));
        added
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// S3 keeps the path as is (no dot-segment removal) and encodes each segment once.
fn canonical_uri(path: &str) -> String {
    path.split('/')
        .map(|seg| uri_encode(&percent_decode(seg)))
        .collect::<Vec<_>>()
        .join("/")
}

/// Names and values decoded then encoded the AWS way, sorted by name, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| uri_encode(&percent_decode(&s.replace('+', " ")));
            (dec(k), dec(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 unreserved characters stay, every other byte becomes `%XX` (upper case).
fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(token: Option<&str>) -> SigV4 {
        SigV4 {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            session_token: token.map(String::from),
        }
    }

    fn auth(h: &[(String, String)]) -> &str {
        &h.iter().find(|(k, _)| k == "authorization").unwrap().1
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(951_782_400 + 3661), "20000229T010101Z");
        assert_eq!(amz_date(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn encoding() {
        assert_eq!(canonical_uri("/b/a%20b/c+d/~x!"), "/b/a%20b/c%2Bd/~x%21");
        assert_eq!(
            canonical_query("z=1&a=b%2Fc&a=a&flag&s=x+y"),
            "a=a&a=b%2Fc&flag=&s=x%20y&z=1"
        );
        assert_eq!(canonical_query(""), "");
    }

    /// The "GET Object" example of AWS's SigV4 documentation for S3.
    #[test]
    fn aws_documented_example() {
        let url = Url::parse("http://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let h = key(None).headers_at(
            "GET",
            &url,
            &[("range", "bytes=0-9".into())],
            EMPTY_SHA256,
            1_369_353_600,
        );
        assert_eq!(
            auth(&h),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// Computed with botocore's S3SigV4Auth (see the crate's tests/ for how), covering a
    /// port, an escaped key, a query and a session token.
    #[test]
    fn botocore_vectors() {
        let url = Url::parse("http://127.0.0.1:5000/my-bucket/dir/a%20b+c.qcow2?versionId=3&a=%2F")
            .unwrap();
        let h = key(Some("TOKEN/abc=")).headers_at("HEAD", &url, &[], EMPTY_SHA256, 1_700_000_000);
        assert_eq!(
            auth(&h),
            include_str!("../tests/botocore_vector.txt").trim()
        );
    }
}
