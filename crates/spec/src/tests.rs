//! Tests of source-spec parsing: the shapes Ceph accepts, the errors for those it refuses,
//! and properties over generated specs.
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn err(v: Value) -> String {
    match SourceSpec::from_json(&v) {
        Ok(s) => panic!("accepted {v}: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_specs_parse_to_what_they_say() {
    let s = SourceSpec::parse(
        r#"{"type":"raw","stream":{"type":"file","file_path":"/mnt/image.raw"}}"#,
    )
    .unwrap();
    assert_eq!(
        s,
        SourceSpec::Raw(RawSpec {
            stream: StreamSpec::File(FileStreamSpec {
                file_path: "/mnt/image.raw".into()
            }),
            snapshots: vec![]
        })
    );
    let n = SourceSpec::from_json(
        &json!({"type":"native","pool_id":3,"image_name":"i","snap_id":"12"}),
    )
    .unwrap();
    let SourceSpec::Native(n) = n else {
        panic!("not native")
    };
    assert_eq!((n.pool, n.snap), (PoolRef::Id(3), Some(SnapRef::Id(12))));
    let o = SourceSpec::from_json(&json!({"type":"vmdk","anything":[1]})).unwrap();
    assert_eq!(o.type_name(), "vmdk");
    let q = SourceSpec::from_json(&json!({"type":"qcow","stream":{"type":"weird","x":1}})).unwrap();
    let SourceSpec::Qcow(q) = q else {
        panic!("not qcow")
    };
    assert_eq!(q.stream.type_name(), "weird");
}

#[test]
fn bad_specs_name_the_path() {
    let file = json!({"type":"file","file_path":"/x"});
    let cases: Vec<(Value, &str)> = vec![
        (json!([1]), "expected a JSON object"),
        (json!({}), "type: missing"),
        (json!({"type":5}), "type: expected a string"),
        (json!({"type":""}), "type: must not be empty"),
        (json!({"type":"raw"}), "stream: missing"),
        (
            json!({"type":"raw","stream":{"type":"file"}}),
            "stream.file_path: missing",
        ),
        (
            json!({"type":"raw","stream":{"type":"file","file_path":7}}),
            "stream.file_path: expected a string",
        ),
        (
            json!({"type":"raw","stream":{"type":"file","file_path":""}}),
            "stream.file_path: must not be empty",
        ),
        (
            json!({"type":"raw","stream":{"type":"file","file_path":"/x","extra":1}}),
            "stream.extra: unknown field",
        ),
        (
            json!({"type":"raw","stream":file.clone(),"snap":[]}),
            "snap: unknown field",
        ),
        (
            json!({"type":"raw","stream":file.clone(),"snapshots":{}}),
            "snapshots: expected an array",
        ),
        (
            json!({"type":"raw","stream":file.clone(),"snapshots":[{"type":"raw","stream":file.clone()}]}),
            "snapshots[0].name: missing",
        ),
        (
            json!({"type":"raw","stream":file.clone(),"snapshots":[{"type":"qcow","name":"a","stream":file.clone()}]}),
            "snapshots[0].type: expected \"raw\", got \"qcow\"",
        ),
        (
            json!({"type":"raw","stream":file.clone(),"snapshots":[
                {"type":"raw","name":"a","stream":file.clone()},
                {"type":"raw","name":"b","stream":{"type":"file"}}]}),
            "snapshots[1].stream.file_path: missing",
        ),
        (
            json!({"type":"raw","stream":file.clone(),"snapshots":[
                {"type":"raw","name":"a","stream":file.clone()},
                {"type":"raw","name":"a","stream":file.clone()}]}),
            "snapshots[1].name: duplicate snapshot name \"a\"",
        ),
        (
            json!({"type":"qcow","stream":"file"}),
            "stream: expected a JSON object",
        ),
        (
            json!({"type":"qcow","stream":{"file_path":"/x"}}),
            "stream.type: missing",
        ),
        (
            json!({"type":"qcow","stream":{"type":"http","url":"ftp://h/x"}}),
            "stream.url: expected an http:// or https:// URL, got \"ftp://h/x\"",
        ),
        (
            json!({"type":"qcow","stream":{"type":"http","url":"http:///x"}}),
            "stream.url: no host in URL \"http:///x\"",
        ),
        (
            json!({"type":"raw","stream":{"type":"s3","url":"http://h/b/k","access_key":"a"}}),
            "stream.secret_key: missing",
        ),
        (
            json!({"type":"raw","stream":{"type":"s3","url":"http://h/b/k","access_key":"config://","secret_key":"s"}}),
            "stream.access_key: config:// reference names no key",
        ),
        (
            json!({"type":"raw","stream":{"type":"nbd","uri":"nbd+unix:///e"}}),
            "stream.uri: nbd+unix:// needs ?socket=PATH",
        ),
        (
            json!({"type":"native","image_name":"i"}),
            "pool_name: missing (give pool_name or pool_id)",
        ),
        (
            json!({"type":"native","pool_name":"rbd","pool_id":1,"image_name":"i"}),
            "pool_id: both pool_name and pool_id given",
        ),
        (
            json!({"type":"native","pool_id":"1","image_name":"i"}),
            "pool_id: expected an integer",
        ),
        (
            json!({"type":"native","pool_id":1.5,"image_name":"i"}),
            "pool_id: expected an integer",
        ),
        (
            json!({"type":"native","pool_id":-1,"image_name":"i"}),
            "pool_id: expected a non-negative integer",
        ),
        (
            json!({"type":"native","pool_name":"rbd"}),
            "image_name: missing",
        ),
        (
            json!({"type":"native","pool_name":"rbd","image_name":"i","snap_id":"x1"}),
            "snap_id: expected an integer or a numeric string",
        ),
        (
            json!({"type":"native","pool_name":"rbd","image_name":"i","snap_id":-2}),
            "snap_id: expected a non-negative integer",
        ),
        (
            json!({"type":"native","pool_name":"rbd","image_name":"i","snap_name":"s","snap_id":1}),
            "snap_id: both snap_name and snap_id given",
        ),
        (
            json!({"type":"native","pool_name":"rbd","image_name":"i","stream":file}),
            "stream: unknown field",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(err(spec.clone()), want, "for {spec}");
    }
    let e = SourceSpec::parse("{\"type\":").unwrap_err();
    assert!(e.to_string().starts_with("malformed JSON: "), "{e}");
}

#[test]
fn secrets_are_masked_but_references_shown() {
    let v = json!({"type":"raw","stream":{"type":"s3","url":"http://h/b/k","access_key":"AKIA","secret_key":"config://rbd/s3/secret"},
                   "snapshots":[{"type":"raw","name":"a","stream":{"type":"s3","url":"http://h/b/k","access_key":"x","secret_key":"y"}}]});
    let m = mask_secrets(&v);
    assert_eq!(m["stream"]["access_key"], "***");
    assert_eq!(m["stream"]["secret_key"], "config://rbd/s3/secret");
    assert_eq!(m["snapshots"][0]["stream"]["secret_key"], "***");
    assert_eq!(m["stream"]["url"], v["stream"]["url"]);
    assert!(!m.to_string().contains("AKIA"));
}

#[test]
fn config_references_resolve_through_the_callback() {
    let lookup = |k: &str| -> Result<String, String> {
        if k == "rbd/s3/key" {
            Ok("v".into())
        } else {
            Err(format!("no key {k}"))
        }
    };
    assert_eq!(
        resolve_config("config://rbd/s3/key", &lookup),
        Ok("v".into())
    );
    assert_eq!(resolve_config("plain", &lookup), Ok("plain".into()));
    assert_eq!(
        resolve_config("config://other", &lookup),
        Err("no key other".into())
    );
}

// ---- property tests: every valid spec round-trips; every damaged one names where.

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9_./-]{1,12}", "\\PC{1,8}"]
}

fn url() -> impl Strategy<Value = String> {
    (
        "(http|https|HTTP)",
        "[a-z0-9.-]{1,10}",
        proptest::option::of(1u16..),
        "[a-zA-Z0-9/_.-]{0,12}",
        "(\\?[a-z=&0-9]{1,8})?",
    )
        .prop_map(|(s, h, p, path, q)| {
            format!(
                "{s}://{h}{}/{path}{q}",
                p.map(|p| format!(":{p}")).unwrap_or_default()
            )
        })
}

fn secret() -> impl Strategy<Value = String> {
    prop_oneof![text(), text().prop_map(|k| format!("config://{k}"))]
}

fn nbd_uri() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[a-z0-9.]{1,8}",
            proptest::option::of(1u16..),
            "[a-zA-Z0-9]{0,6}"
        )
            .prop_map(|(h, p, e)| format!(
                "nbd://{h}{}/{e}",
                p.map(|p| format!(":{p}")).unwrap_or_default()
            )),
        ("[a-zA-Z0-9]{0,6}", "/[a-z0-9/]{1,10}")
            .prop_map(|(e, s)| format!("nbd+unix:///{e}?socket={s}")),
    ]
}

fn stream() -> impl Strategy<Value = StreamSpec> {
    prop_oneof![
        text().prop_map(|file_path| StreamSpec::File(FileStreamSpec { file_path })),
        url().prop_map(|url| StreamSpec::Http(HttpStreamSpec { url })),
        (
            url(),
            secret(),
            secret(),
            proptest::option::of(text()),
            proptest::option::of(secret())
        )
            .prop_map(|(url, access_key, secret_key, region, session_token)| {
                StreamSpec::S3(S3StreamSpec {
                    url,
                    access_key,
                    secret_key,
                    region,
                    session_token,
                })
            }),
        nbd_uri().prop_map(|uri| {
            let target = NbdTarget::parse(&uri).expect("generated URIs are valid");
            StreamSpec::Nbd(NbdStreamSpec { uri, target })
        }),
        ("x-[a-z]{1,6}", text()).prop_map(|(t, x)| StreamSpec::Other {
            type_name: t.clone(),
            json: json!({"type": t, "x": x})
        }),
    ]
}

fn native() -> impl Strategy<Value = NativeSpec> {
    let pool = prop_oneof![
        text().prop_map(PoolRef::Name),
        (0i64..).prop_map(PoolRef::Id)
    ];
    let snap = proptest::option::of(prop_oneof![
        text().prop_map(SnapRef::Name),
        any::<u64>().prop_map(SnapRef::Id)
    ]);
    (
        pool,
        "[a-z]{0,4}",
        text(),
        proptest::option::of("[0-9a-f]{12}"),
        snap,
    )
        .prop_map(
            |(pool, pool_namespace, image_name, image_id, snap)| NativeSpec {
                pool,
                pool_namespace,
                image_name,
                image_id,
                snap,
            },
        )
}

fn spec() -> impl Strategy<Value = SourceSpec> {
    let snaps = proptest::collection::vec((text(), stream()), 0..4).prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .map(|(name, stream)| RawSnapSpec { name, stream })
            .collect()
    });
    prop_oneof![
        native().prop_map(SourceSpec::Native),
        stream().prop_map(|stream| SourceSpec::Qcow(QcowSpec { stream })),
        (stream(), snaps)
            .prop_map(|(stream, snapshots)| SourceSpec::Raw(RawSpec { stream, snapshots })),
    ]
}

/// Every JSON object in `v` with its path, as the parser names them.
fn objects(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            out.push((path.clone(), v.clone()));
            for (k, c) in m {
                objects(c, walk::join(&path, k), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                objects(c, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `v` with the object at `path` replaced by `f(object)`.
fn edit(
    v: &Value,
    at: &str,
    path: String,
    f: &dyn Fn(&mut serde_json::Map<String, Value>),
) -> Value {
    match v {
        Value::Object(m) => {
            let mut m: serde_json::Map<String, Value> = m
                .iter()
                .map(|(k, c)| (k.clone(), edit(c, at, walk::join(&path, k), f)))
                .collect();
            if path == at {
                f(&mut m);
            }
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, c)| edit(c, at, format!("{path}[{i}]"), f))
                .collect(),
        ),
        other => other.clone(),
    }
}

const KNOWN: [&str; 7] = ["file", "http", "s3", "nbd", "raw", "qcow", "native"];

proptest! {
    #[test]
    fn valid_specs_round_trip(s in spec()) {
        let v = s.to_json();
        prop_assert_eq!(SourceSpec::from_json(&v), Ok(s.clone()));
        prop_assert_eq!(SourceSpec::parse(&v.to_string()), Ok(s));
    }

    #[test]
    fn an_unknown_field_is_named(s in spec(), pick in any::<prop::sample::Index>(), key in "zz[a-z]{0,6}") {
        let v = s.to_json();
        let mut objs = Vec::new();
        objects(&v, String::new(), &mut objs);
        // Objects of unknown stream types are the plugin's to validate.
        let known: Vec<_> = objs.into_iter().filter(|(_, o)| KNOWN.iter().any(|t| o["type"] == *t)).collect();
        let (path, _) = pick.get(&known).clone();
        let bad = edit(&v, &path, String::new(), &|m| { m.insert(key.clone(), json!(1)); });
        let e = SourceSpec::from_json(&bad).unwrap_err();
        prop_assert_eq!(e.path, walk::join(&path, &key));
        prop_assert_eq!(e.msg, "unknown field");
    }

    #[test]
    fn a_missing_field_is_named(s in spec(), pick in any::<prop::sample::Index>(), which in any::<prop::sample::Index>()) {
        let v = s.to_json();
        let mut objs = Vec::new();
        objects(&v, String::new(), &mut objs);
        let required = ["type", "stream", "file_path", "url", "access_key", "secret_key", "uri", "image_name", "name"];
        let known: Vec<_> = objs.into_iter().filter(|(_, o)| KNOWN.iter().any(|t| o["type"] == *t)).collect();
        let (path, o) = pick.get(&known).clone();
        let keys: Vec<String> = o.as_object().unwrap().keys().filter(|k| required.contains(&k.as_str())).cloned().collect();
        let key = which.get(&keys).clone();
        let bad = edit(&v, &path, String::new(), &|m| { m.remove(&key); });
        let e = SourceSpec::from_json(&bad).unwrap_err();
        prop_assert_eq!(e.path, walk::join(&path, &key));
        prop_assert_eq!(e.msg, "missing");
    }

    #[test]
    fn arbitrary_json_never_panics(text in "\\PC{0,64}") {
        let _ = SourceSpec::parse(&text);
    }
}

#[test]
fn an_import_of_a_native_source_needs_a_snapshot() {
    let head =
        SourceSpec::from_json(&json!({"type":"native","pool_id":1,"image_name":"i"})).unwrap();
    let e = head.check_import().unwrap_err();
    assert!(
        e.to_string().contains("snapshot required for import"),
        "{e}"
    );
    for snap in [
        json!({"snap_name":"2"}),
        json!({"snap_id":4}),
        json!({"snap_id":"4"}),
    ] {
        let mut v = json!({"type":"native","pool_name":"rbd","pool_namespace":"","image_name":"i"});
        v.as_object_mut()
            .unwrap()
            .extend(snap.as_object().unwrap().clone());
        SourceSpec::from_json(&v).unwrap().check_import().unwrap();
    }
    let raw = SourceSpec::parse(r#"{"type":"raw","stream":{"type":"file","file_path":"/x"}}"#);
    raw.unwrap().check_import().unwrap();
}

#[test]
fn script_cases_of_bad_native_specs_are_refused() {
    for (v, want) in [
        (
            json!({"type":"native","pool_id":1,"image_name":"i","snap_name":123456}),
            "snap_name: expected a string",
        ),
        (
            json!({"type":"native","pool_id":1,"image_name":"i","snap_id":"foobar"}),
            "snap_id: expected an integer or a numeric string",
        ),
        (
            json!({"type":"native","pool_id":1,"image_name":"i","snap_id":-1}),
            "snap_id: expected a non-negative integer",
        ),
    ] {
        assert_eq!(err(v), want);
    }
    let bad_json =
        r#"{"type": "native", "pool_id": 1, "image_name": "i", "snap_name": non-existing}"#;
    let e = SourceSpec::parse(bad_json).unwrap_err();
    assert!(e.to_string().starts_with("malformed JSON"), "{e}");
}

/// Every place that echoes a user value quotes a short excerpt of it.
#[test]
fn errors_never_echo_long_values() {
    let long = "x".repeat(200_000);
    let cases = [
        json!({"type":long}),
        json!({"type":"raw","stream":{"type":long}}),
        json!({"type":"native","pool_id":1,"image_name":"i","snap_id":"9".repeat(100_000)}),
        json!({"type":"raw","stream":{"type":"http","url":long}}),
        json!({"type":"raw","stream":{"type":"http","url":format!("http://{long} x")}}),
        json!({"type":"raw","stream":{"type":"nbd","uri":long}}),
        json!({"type":"raw","stream":{"type":"nbd","uri":format!("nbd://h:{long}/")}}),
        json!({"type":"raw","stream":{"type":"nbd","uri":format!("nbd+unix:///%zz{long}?socket=/s")}}),
        json!({"type":"raw","stream":{"type":"nbd","uri":format!("nbd+unix:///?{long}")}}),
        json!({"type":"raw","stream":{"type":"file","file_path":"/x",long.clone():1}}),
        json!({"type":"raw","stream":{"type":"file","file_path":"/x"},"snapshots":[
            {"type":"raw","name":long,"stream":{"type":"file","file_path":"/x"}},
            {"type":"raw","name":long,"stream":{"type":"file","file_path":"/x"}}]}),
    ];
    for v in cases {
        let e = err(v);
        assert!(e.len() < 400, "{} bytes: {}...", e.len(), &e[..100]);
    }
    let e = FileStreamSpec::from_json(&json!({"type":long}), "s").unwrap_err();
    assert!(e.to_string().len() < 400);
    let huge = format!("{{\"type\":\"{}\"}}", "y".repeat(MAX_SPEC_BYTES));
    let e = SourceSpec::parse(&huge).unwrap_err().to_string();
    assert!(e.contains("limit") && e.len() < 200, "{e}");
}
