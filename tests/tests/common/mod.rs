//! The fixture the crash and race tests share: a store with a source image of 64 KiB
//! objects and a few snapshots (or a raw file, for import-only), the bytes each point must
//! hold, and the checks a trial ends with.

#![allow(dead_code)]

use rbdm_image::{CreateOptions, ImageSpec, Layout, Rbd};
pub use rbdm_tests::Rng;
use rbdm_tests::{pseudo_random, stderr, stdout, Env};

pub const OBJ: u64 = 64 << 10;
pub const OBJECTS: u64 = 32;
const SIZE: u64 = OBJ * OBJECTS;
/// Snapshots that hold distinct data; any further ones repeat the last of these.
const DATA_SNAPS: usize = 3;

pub struct Fixture {
    pub env: Env,
    /// Snapshot names of the source, oldest first.
    pub snaps: Vec<String>,
    /// Expected bytes: per snapshot name, and `None` for the head.
    pub points: Vec<(Option<String>, Vec<u8>)>,
    /// The raw file an import-only migration reads, and its bytes.
    pub raw: Vec<u8>,
}

/// Writes (and discards) a few whole and partial objects, into the image and the model.
fn scribble(img: &rbdm_image::Image, model: &mut [u8], rng: &mut Rng) {
    for _ in 0..OBJECTS / 2 {
        let obj = rng.below(OBJECTS);
        let off = obj * OBJ + rng.below(OBJ / 2);
        let len = 1 + rng.below(OBJ);
        let len = len.min(SIZE - off);
        if rng.below(6) == 0 {
            img.discard(off, len).expect("discard");
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let data = pseudo_random(len as usize, rng.next_u64());
            img.write(off, &data).expect("write");
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
    }
}

impl Fixture {
    /// A store with `src` (unless `snaps` is 0: then only the raw file) having `snaps`
    /// snapshots `s1`...; the first three hold different data, the head differs again.
    pub fn new(snaps: usize, seed: u64) -> Fixture {
        let env = Env::new();
        let mut rng = Rng(seed | 1);
        let raw = pseudo_random(SIZE as usize, rng.next_u64());
        std::fs::write(env.path("source.raw"), &raw).expect("write the raw source");
        let mut f = Fixture {
            env,
            snaps: Vec::new(),
            points: Vec::new(),
            raw,
        };
        if snaps > 0 {
            f.make_source(snaps, &mut rng);
        }
        f
    }

    fn make_source(&mut self, snaps: usize, rng: &mut Rng) {
        let rbd = Rbd::new(rbdm_store::open(&self.env.store).expect("store"));
        let opts = CreateOptions {
            layout: Some(Layout::new(OBJ, OBJ, 1).expect("layout")),
            ..CreateOptions::with_size(SIZE)
        };
        let spec = ImageSpec::parse("src", "rbd").expect("spec");
        rbd.create(&spec.pool_spec(), "src", &opts)
            .expect("create src");
        let img = rbd.open(&spec, false).expect("open src");
        let mut model = vec![0u8; SIZE as usize];
        for i in 0..snaps {
            if i < DATA_SNAPS {
                scribble(&img, &mut model, rng);
            }
            let name = format!("s{}", i + 1);
            img.snap_create(&name).expect("snap create");
            if i < DATA_SNAPS || i + 1 == snaps {
                self.points.push((Some(name.clone()), model.clone()));
            }
            self.snaps.push(name);
        }
        scribble(&img, &mut model, rng);
        img.flush().expect("flush");
        self.points.push((None, model));
    }

    pub fn raw_spec(&self) -> String {
        serde_json::json!({"type": "raw", "stream": {"type": "file",
            "file_path": self.env.path("source.raw").display().to_string()}})
        .to_string()
    }

    pub fn export(&self, spec: &str, trial: &str) -> Vec<u8> {
        let path = self.env.path("export.out");
        let _ = std::fs::remove_file(&path);
        let out = self
            .env
            .rbdm(&["export", spec, path.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "{trial}: export {spec} failed: {}",
            stderr(&out)
        );
        std::fs::read(&path).expect("read the export")
    }

    pub fn head_is(&self, name: &str, want: &[u8], trial: &str) {
        let got = self.export(name, trial);
        if let Err(e) = rbdm_tests::bytes_equal(&got, want) {
            panic!("{trial}: {name}: {e}");
        }
    }

    /// `name` has the source's snapshots and every point holds the source's bytes.
    pub fn holds_source(&self, name: &str, trial: &str) {
        let listed: Vec<String> = self
            .env
            .json(&["snap", "ls", name])
            .as_array()
            .expect("a list")
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(listed, self.snaps, "{trial}: snapshots of {name}");
        for (snap, want) in &self.points {
            let spec = match snap {
                Some(s) => format!("{name}@{s}"),
                None => name.to_string(),
            };
            if let Err(e) = rbdm_tests::bytes_equal(&self.export(&spec, trial), want) {
                panic!("{trial}: {spec}: {e}");
            }
        }
    }

    /// The migration state `status` shows for `name`, if any.
    pub fn state(&self, name: &str) -> Option<String> {
        let out = self.env.rbdm(&["status", name, "--format", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
        v["migration"]["state"]
            .as_str()
            .map(|s| s.split(' ').next().unwrap_or(s).to_string())
    }

    /// The source is back under its name, unmigrated, with all its bytes.
    pub fn source_intact(&self, trial: &str) {
        assert_eq!(
            self.state("src"),
            None,
            "{trial}: src still shows a migration"
        );
        self.holds_source("src", trial);
        self.trash_empty(trial);
    }

    /// The migration finished: `dst` holds everything, the source is gone.
    pub fn migrated(&self, dst: &str, trial: &str) {
        assert_eq!(
            self.state(dst),
            None,
            "{trial}: {dst} still shows a migration"
        );
        self.holds_source(dst, trial);
        self.gone("src", trial);
    }

    /// No image of that name, and nothing left in any trash.
    pub fn gone(&self, name: &str, trial: &str) {
        let out = self.env.rbdm(&["info", name]);
        assert_eq!(
            out.status.code(),
            Some(libc::ENOENT),
            "{trial}: {name} is still there"
        );
        self.trash_empty(trial);
    }

    fn trash_empty(&self, trial: &str) {
        let t = self.env.ok(&["trash", "ls", "--all"]);
        assert!(t.trim().is_empty(), "{trial}: trash holds {t}");
    }

    /// No object in the store that no image owns.
    pub fn fsck_clean(&self, trial: &str) {
        let rbd = Rbd::new(rbdm_store::open(&self.env.store).expect("store"));
        let found = rbd.fsck(None).expect("fsck runs");
        assert!(found.is_empty(), "{trial}: fsck found {found:#?}");
    }
}
