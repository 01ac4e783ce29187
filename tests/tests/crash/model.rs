//! The fixture of the image-operation kill trials: a store with a small image (`img`, or a
//! parent `p` with a protected snapshot `p@s`), the bytes each image and snapshot must hold,
//! and the checks every trial ends with: listings agree with the model, every point reads
//! exactly its bytes, no intent is left unfinished and `fsck` finds nothing.

use rbdm_image::{CreateOptions, Image, ImageSpec, Layout, Rbd};
use rbdm_tests::{pseudo_random, stderr, Env, Rng};

/// Small objects, so a few dozen of them make an operation long enough to be killed inside.
pub const OBJ: u64 = 16 << 10;
pub const OBJECTS: u64 = 48;
pub const SIZE: u64 = OBJ * OBJECTS;

pub struct Model {
    pub env: Env,
    /// Expected bytes of `image[@snap]` specs, in the order they were made.
    pub points: Vec<(String, Vec<u8>)>,
}

fn opts(size: u64) -> CreateOptions {
    CreateOptions {
        layout: Some(Layout::new(OBJ, OBJ, 1).expect("layout")),
        ..CreateOptions::with_size(size)
    }
}

/// Writes a few random pieces (most objects touched), into the image and the model.
pub fn scribble(img: &Image, model: &mut [u8], rng: &mut Rng, pieces: u64) {
    let size = model.len() as u64;
    for _ in 0..pieces {
        let off = rng.below(size);
        let len = (1 + rng.below(2 * OBJ)).min(size - off);
        let data = pseudo_random(len as usize, rng.next_u64());
        img.write(off, &data).expect("write");
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            env: Env::new(),
            points: Vec::new(),
        }
    }

    pub fn rbd(&self) -> Rbd {
        Rbd::new(rbdm_store::open(&self.env.store).expect("store"))
    }

    /// Creates `name` (size `size`) and fills it; returns it open, with its bytes.
    pub fn image(&self, name: &str, size: u64, rng: &mut Rng) -> (Image, Vec<u8>) {
        let rbd = self.rbd();
        let spec = ImageSpec::parse(name, "rbd").expect("spec");
        rbd.create(&spec.pool_spec(), name, &opts(size))
            .expect("create");
        let img = rbd.open(&spec, false).expect("open");
        let mut model = vec![0u8; size as usize];
        scribble(&img, &mut model, rng, OBJECTS);
        (img, model)
    }

    /// A parent `p` with protected snapshot `p@s` (its bytes recorded), the head changed since.
    pub fn parent(&mut self, rng: &mut Rng) -> Vec<u8> {
        let (img, mut model) = self.image("p", SIZE, rng);
        img.snap_create("s").expect("snap");
        img.snap_protect("s").expect("protect");
        self.points.push(("p@s".into(), model.clone()));
        scribble(&img, &mut model, rng, 4);
        self.points.push(("p".into(), model));
        self.points[0].1.clone()
    }

    pub fn expect(&mut self, spec: &str, bytes: Vec<u8>) {
        self.points.retain(|(s, _)| s != spec);
        self.points.push((spec.into(), bytes));
    }

    /// The bytes expected at `spec` (a test that asks for one it never set is wrong).
    pub fn expected(&self, spec: &str) -> &[u8] {
        let point = self.points.iter().find(|(s, _)| s == spec);
        &point
            .unwrap_or_else(|| panic!("no expected bytes for {spec}"))
            .1
    }

    pub fn forget(&mut self, image: &str) {
        self.points
            .retain(|(s, _)| s.split('@').next() != Some(image));
    }

    /// Reads a whole image or snapshot through the library.
    pub fn read(&self, spec: &str) -> Vec<u8> {
        let spec = ImageSpec::parse(spec, "rbd").expect("spec");
        let img = self.rbd().open(&spec, true).expect("open to read");
        let mut buf = vec![0u8; img.size() as usize];
        img.read(0, &mut buf).expect("read");
        buf
    }

    /// Panics naming the first difference (never printing the bytes).
    pub fn same(&self, got: &[u8], want: &[u8], what: &str) {
        if let Err(e) = rbdm_tests::bytes_equal(got, want) {
            panic!("{what}: {e}");
        }
    }

    /// Image names `ls` shows.
    pub fn ls(&self) -> Vec<String> {
        names(&self.env.json(&["ls"]), None)
    }

    /// (id, name) of every trash entry, `--all`.
    pub fn trash(&self) -> Vec<(String, String)> {
        let v = self.env.json(&["trash", "ls", "--all"]);
        v.as_array()
            .expect("a list")
            .iter()
            .map(|e| (text(&e["id"]), text(&e["name"])))
            .collect()
    }

    pub fn snaps(&self, image: &str) -> Vec<String> {
        names(&self.env.json(&["snap", "ls", image]), Some("name"))
    }

    pub fn size(&self, image: &str) -> u64 {
        self.env.json(&["info", image])["size"]
            .as_u64()
            .expect("a size")
    }

    /// Children of `p@s`, by image name.
    pub fn children(&self) -> Vec<String> {
        names(&self.env.json(&["children", "p@s"]), Some("image"))
    }

    /// Runs a recovery command that may find its work done: success, or failure with one of
    /// the errnos `done` (meaning "nothing left to do").
    pub fn recover(&self, args: &[&str], done: &[i32], trial: &str) {
        let out = self.env.rbdm(args);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || done.contains(&code),
            "{trial}: recovery {args:?} failed ({code}): {}",
            stderr(&out)
        );
    }

    /// The end of every trial: `ls` lists exactly the images of the model, every point reads
    /// its bytes, no intent is unfinished, and `fsck` is clean.
    pub fn settled(&self, trial: &str) {
        let mut want: Vec<String> = self
            .points
            .iter()
            .filter(|(s, _)| !s.contains('@'))
            .map(|(s, _)| s.clone())
            .collect();
        want.sort();
        assert_eq!(self.ls(), want, "{trial}: ls");
        let rbd = self.rbd();
        let pool = rbdm_image::PoolSpec::new("rbd", "");
        assert_eq!(
            rbd.pending(&pool).expect("pending"),
            vec![],
            "{trial}: unfinished naming intents"
        );
        for name in &want {
            let img = rbd
                .open(&ImageSpec::parse(name, "rbd").expect("spec"), true)
                .expect("open");
            assert_eq!(img.intents().expect("intents"), vec![], "{trial}: {name}");
        }
        for (spec, bytes) in &self.points {
            self.same(&self.read(spec), bytes, &format!("{trial}: {spec}"));
        }
        let found = rbd.fsck(None).expect("fsck runs");
        assert!(found.is_empty(), "{trial}: fsck found {found:#?}");
    }
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Names in a JSON list: plain strings, or objects' `key`.
fn names(v: &serde_json::Value, key: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| match key {
            Some(k) => text(&e[k]),
            None => text(e),
        })
        .collect();
    out.sort();
    out
}
