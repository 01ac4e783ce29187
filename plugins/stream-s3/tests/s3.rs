//! The s3 stream against a real S3 server that checks SigV4 signatures: moto, started here
//! on loopback. The bucket and objects are made by boto3 (another client than ours), then
//! moto's authentication is switched on, so every request of ours must be signed right.

use std::process::Command;

use rbdm_registry::{OpenContext, SourceError, Stream};
use rbdm_tests::pseudo_random;
use serde_json::{json, Value};

/// Creates a user with a key, a role to get temporary credentials from, a bucket and the
/// objects; then turns authentication on. Prints the credentials as JSON.
const SETUP: &str = r#"
import json, sys, boto3, urllib.request
endpoint, files = sys.argv[1], sys.argv[2:]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam, sts, s3 = boto3.client("iam", **kw), boto3.client("sts", **kw), boto3.client("s3", **kw)
allow = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
iam.create_user(UserName="rbdm")
iam.put_user_policy(UserName="rbdm", PolicyName="s3", PolicyDocument=allow)
key = iam.create_access_key(UserName="rbdm")["AccessKey"]
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
iam.create_role(RoleName="reader", AssumeRolePolicyDocument=trust)
iam.put_role_policy(RoleName="reader", PolicyName="s3", PolicyDocument=allow)
temp = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/reader", RoleSessionName="rbdm-test")["Credentials"]
s3.create_bucket(Bucket="images")
s3.create_bucket(Bucket="other")
for f in files:
    name, path = f.split("=", 1)
    s3.upload_file(path, "images", name)
s3.put_object(Bucket="other", Key="x.img", Body=b"other bucket")
urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"})).read()
print(json.dumps({"ak": key["AccessKeyId"], "sk": key["SecretAccessKey"],
                  "tak": temp["AccessKeyId"], "tsk": temp["SecretAccessKey"], "token": temp["SessionToken"]}))
"#;

fn open(spec: Value, config: &[(&str, &str)]) -> Result<Box<dyn Stream>, SourceError> {
    rbdm_stream_s3::link();
    // The values in a store's config-key store, resolved as the CLI and migration do.
    let rbd = rbdm_image::Rbd::new(rbdm_store::open("mem://").unwrap());
    for (k, v) in config {
        rbd.config_key_set(k, v.as_bytes()).unwrap();
    }
    let ctx = OpenContext::new(move || Ok(rbd.clone()));
    rbdm_registry::open_stream(&spec, "stream", &ctx)
}

fn read_all(s: &dyn Stream) -> Vec<u8> {
    let mut buf = vec![0u8; s.size() as usize];
    s.read_at(0, &mut buf).unwrap();
    buf
}

#[test]
fn moto_signed_reads_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = pseudo_random(2 * 1024 * 1024 + 4321, 11);
    data[300_000..700_000].fill(0);
    std::fs::write(dir.path().join("disk.img"), &data).unwrap();
    std::fs::write(dir.path().join("base.img"), b"base bytes").unwrap();
    std::fs::write(dir.path().join("odd.img"), b"odd name").unwrap();
    let moto = rbdm_tests::servers::start_moto();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let out = Command::new("python3")
        .args(["-c", SETUP, &endpoint])
        .arg(format!(
            "dir/disk.img={}",
            dir.path().join("disk.img").display()
        ))
        .arg(format!(
            "dir/base.img={}",
            dir.path().join("base.img").display()
        ))
        .arg(format!(
            "dir/a b~c.img={}",
            dir.path().join("odd.img").display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (ak, sk) = (creds["ak"].as_str().unwrap(), creds["sk"].as_str().unwrap());
    let url = format!("{endpoint}/images/dir/disk.img");
    let spec =
        |secret: &str| json!({"type": "s3", "url": url, "access_key": ak, "secret_key": secret});

    // Reads equal the object.
    let s = open(spec(sk), &[]).unwrap();
    assert_eq!(s.size(), data.len() as u64);
    assert!(read_all(&*s) == data);
    rbdm_registry::conformance::check_stream(&*s, Some(&data)).unwrap_or_else(|e| panic!("{e}"));
    for (off, len) in [
        (0usize, 1usize),
        (299_999, 400_002),
        (data.len() - 7, 7),
        (1_048_576, 65_536),
    ] {
        let mut buf = vec![0u8; len];
        s.read_at(off as u64, &mut buf).unwrap();
        assert!(buf == data[off..off + len], "{off}+{len}");
    }
    let (mut a, mut b) = (vec![0u8; 1000], vec![0u8; 2000]);
    s.read_vectored_at(&mut [(5000, &mut b[..]), (4000, &mut a[..])])
        .unwrap();
    assert!(a == data[4000..5000] && b == data[5000..7000]);
    assert!(
        !s.describe().contains(sk) && !s.describe().contains(ak),
        "{}",
        s.describe()
    );

    // A wrong secret, an unknown key: authentication failed, EACCES.
    let e = open(spec("not-the-secret"), &[]).err().unwrap();
    assert!(matches!(e, SourceError::PermissionDenied(_)), "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(e.to_string().contains("SignatureDoesNotMatch"), "{e}");
    assert_eq!(e.errno(), 13);
    let e = open(
        json!({"type": "s3", "url": url, "access_key": "AKIANOSUCHKEY0000000", "secret_key": sk}),
        &[],
    )
    .err()
    .unwrap();
    assert!(
        matches!(e, SourceError::PermissionDenied(_))
            && e.to_string().contains("authentication failed"),
        "{e}"
    );

    // Credentials from the config-key store.
    let cfg = [("s3/ak", ak), ("s3/sk", sk)];
    let s2 = open(json!({"type": "s3", "url": url, "access_key": "config://s3/ak", "secret_key": "config://s3/sk",
                         "region": "us-east-1"}), &cfg).unwrap();
    assert_eq!(s2.size(), data.len() as u64);
    let e = open(json!({"type": "s3", "url": url, "access_key": "config://s3/ak", "secret_key": "config://nope"}), &cfg)
        .err()
        .unwrap();
    assert!(
        matches!(e, SourceError::NotFound(_)) && e.to_string().contains("nope"),
        "{e}"
    );

    // Temporary credentials with a session token; a wrong token is refused.
    let (tak, tsk, token) = (
        creds["tak"].as_str().unwrap(),
        creds["tsk"].as_str().unwrap(),
        creds["token"].as_str().unwrap(),
    );
    let temp = |t: &str| json!({"type": "s3", "url": url, "access_key": tak, "secret_key": tsk, "session_token": t});
    let s3 = open(temp(token), &[]).unwrap();
    let mut buf = [0u8; 100];
    s3.read_at(1000, &mut buf).unwrap();
    assert!(buf[..] == data[1000..1100]);
    let e = open(temp("wrong-token"), &[]).err().unwrap();
    assert!(matches!(e, SourceError::PermissionDenied(_)), "{e}");

    // A key that needs escaping (moto, like boto3's own requests to it, mis-verifies keys
    // with `+ ( ) !`, so a space and a tilde), a missing key, siblings confined to the bucket.
    let odd = open(
        json!({"type": "s3", "url": format!("{endpoint}/images/dir/a%20b%7Ec.img"),
                          "access_key": ak, "secret_key": sk}),
        &[],
    )
    .unwrap();
    assert_eq!(read_all(&*odd), b"odd name");
    let e = open(json!({"type": "s3", "url": format!("{endpoint}/images/dir/none.img"), "access_key": ak, "secret_key": sk}), &[])
        .err()
        .unwrap();
    assert!(matches!(e, SourceError::NotFound(_)), "{e}");
    assert_eq!(
        read_all(&*s.open_relative("base.img").unwrap()),
        b"base bytes"
    );
    assert_eq!(
        read_all(&*s.open_relative("a%20b~c.img").unwrap()),
        b"odd name"
    );
    let e = s.open_relative("../../other/x.img").err().unwrap();
    assert!(e.to_string().contains("outside /images/"), "{e}");
    let e = s
        .open_relative("http://127.0.0.1:1/images/x.img")
        .err()
        .unwrap();
    assert!(e.to_string().contains("another server"), "{e}");

    // Spec errors name the path.
    let bad = |v: Value| match open(v, &[]) {
        Err(SourceError::BadSpec(m)) => m,
        other => panic!("expected BadSpec, got {:?}", other.map(|s| s.describe())),
    };
    assert_eq!(
        bad(json!({"type": "s3", "url": url, "access_key": ak})),
        "stream.secret_key: missing"
    );
    assert!(bad(json!({"type": "s3", "url": format!("{endpoint}/images"), "access_key": ak, "secret_key": sk}))
        .starts_with("stream.url: expected a path-style URL"));
    assert!(bad(
        json!({"type": "s3", "url": url, "access_key": ak, "secret_key": sk, "bucket": "x"})
    )
    .starts_with("stream.bucket"));

    // With the server gone, reads fail (after their retries) rather than answer zeros.
    drop(moto);
    rbdm_registry::conformance::check_fails(&*s).unwrap_or_else(|e| panic!("{e}"));
}
