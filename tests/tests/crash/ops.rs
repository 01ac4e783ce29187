//! Kill trials of the image operations that take several steps: flatten, resize, snap
//! rollback / create / purge, clone, rm, rename, and the trash moves. Each trial builds a small store,
//! SIGKILLs the command at a seeded moment, checks what the listings say right after the kill
//! (all or nothing), runs the recovery a user would (the same command again), and ends with
//! [`Model::settled`].

use std::time::Duration;

use libc::{EEXIST, EINVAL, ENOENT};
use rbdm_image::ImageSpec;
use rbdm_tests::Rng;

use super::model::{scribble, Model, OBJ, SIZE};
use super::{delay, run_trials, seed};

/// Runs `args` once unkilled on a fixture from `make` and returns how long it took.
fn window(make: &dyn Fn(&mut Rng) -> Model, args: &[&str]) -> Duration {
    let m = make(&mut Rng(7));
    let t = std::time::Instant::now();
    m.env.ok(args);
    t.elapsed()
}

/// The usual trial: a store from `make`, `args` SIGKILLed at a seeded moment, then `check`
/// (given the store and the trial's name, to print with a failure).
fn kill_trials(
    what: &str,
    salt: u64,
    make: impl Fn(&mut Rng) -> Model,
    args: &[&str],
    mut check: impl FnMut(&mut Model, &str),
) {
    let w = window(&make, args);
    run_trials(what, salt, |rng, i| {
        let mut m = make(rng);
        let trial = format!("{what} trial {i} (seed {})", seed(salt));
        kill(&m, args, rng, w);
        check(&mut m, &trial);
    });
}

fn kill(m: &Model, args: &[&str], rng: &mut Rng, window: Duration) {
    let child = m.env.command(args).spawn().expect("rbdm starts");
    super::kill_child(child, delay(rng, window));
}

/// A clone `c` of `p@s` with a snapshot `c@cs1` and a changed head; with `shrunk`, the head
/// was shrunk and grown back after the snapshot, so `c@cs1` sees more of the parent than the
/// head does (a copy-up then writes twice).
fn clone_fixture(rng: &mut Rng, shrunk: bool) -> Model {
    let mut m = Model::new();
    let base = m.parent(rng);
    let rbd = m.rbd();
    let p = ImageSpec::parse("p@s", "rbd").expect("spec");
    let c = ImageSpec::parse("c", "rbd").expect("spec");
    let opts = rbdm_image::CreateOptions::with_size(SIZE);
    rbd.clone_image(&p, &c, &opts).expect("clone");
    let img = rbd.open(&c, false).expect("open c");
    let mut model = base;
    scribble(&img, &mut model, rng, 3);
    img.snap_create("cs1").expect("snap");
    m.expect("c@cs1", model.clone());
    if shrunk {
        let keep = SIZE / 2 + OBJ / 3;
        img.resize(keep, true, &mut |_, _| {}).expect("shrink");
        img.resize(SIZE, false, &mut |_, _| {}).expect("grow");
        model[keep as usize..].fill(0);
    }
    scribble(&img, &mut model, rng, 3);
    m.expect("c", model);
    m
}

#[test]
fn killed_flatten_is_finished_by_flatten() {
    let args = ["flatten", "c"];
    let w = window(&|r| clone_fixture(r, true), &args);
    run_trials("flatten", 11, |rng, i| {
        let shrunk = rng.below(2) == 0;
        let m = clone_fixture(rng, shrunk);
        let trial = format!("flatten trial {i} shrunk {shrunk} (seed {})", seed(11));
        kill(&m, &args, rng, w);
        m.recover(&args, &[EINVAL], &trial);
        assert_eq!(
            m.env.json(&["info", "c"]).get("parent"),
            None,
            "{trial}: c still has a parent"
        );
        // The snapshot that saw more of the parent than the head keeps its link.
        let want: Vec<String> = if shrunk { vec!["c".into()] } else { vec![] };
        assert_eq!(m.children(), want, "{trial}: children of p@s");
        m.settled(&trial);
        if !shrunk {
            m.env.ok(&["snap", "unprotect", "p@s"]);
        }
    });
}

fn resize_fixture(rng: &mut Rng) -> Model {
    let mut m = Model::new();
    let (img, model) = m.image("img", SIZE, rng);
    img.snap_create("s1").expect("snap");
    m.expect("img@s1", model.clone());
    let mut head = model;
    scribble(&img, &mut head, rng, 8);
    m.expect("img", head);
    m
}

#[test]
fn killed_resize_is_finished_by_resize() {
    let small = format!("{}B", SIZE / 3 + 123);
    let big = format!("{}B", SIZE * 2);
    let shrink = ["resize", "--allow-shrink", "--size", small.as_str(), "img"];
    let grow = ["resize", "--size", big.as_str(), "img"];
    let w = window(&resize_fixture, &shrink).max(window(&resize_fixture, &grow));
    run_trials("resize", 12, |rng, i| {
        let mut m = resize_fixture(rng);
        let shrinking = rng.below(2) == 0;
        let (args, size) = if shrinking {
            (&shrink[..], SIZE / 3 + 123)
        } else {
            (&grow[..], SIZE * 2)
        };
        let trial = format!("resize trial {i} shrink {shrinking} (seed {})", seed(12));
        kill(&m, args, rng, w);
        // All or nothing: the size `info` shows is the old one with all its bytes, or the new.
        let now = m.size("img");
        if now == SIZE {
            m.same(
                &m.read("img"),
                m.expected("img"),
                &format!("{trial}: old size, other bytes"),
            );
        } else {
            assert_eq!(now, size, "{trial}: a size nobody asked for");
        }
        m.recover(args, &[], &trial);
        let mut head = m.expected("img").to_vec();
        head.resize(size as usize, 0);
        if shrinking {
            // Growing back must read zeros, not what the shrink cut off.
            m.env.ok(&["resize", "--size", &format!("{SIZE}B"), "img"]);
            head.resize(SIZE as usize, 0);
        }
        m.expect("img", head);
        m.settled(&trial);
    });
}

fn rollback_fixture(rng: &mut Rng) -> Model {
    let mut m = Model::new();
    let (img, model) = m.image("img", SIZE, rng);
    img.snap_create("s1").expect("snap");
    m.expect("img@s1", model.clone());
    let mut head = model;
    img.resize(SIZE + 5 * OBJ, false, &mut |_, _| {})
        .expect("grow");
    head.resize((SIZE + 5 * OBJ) as usize, 0);
    scribble(&img, &mut head, rng, 12);
    m.expect("img", head);
    m
}

#[test]
fn killed_rollback_is_finished_by_rollback() {
    let args = ["snap", "rollback", "img@s1"];
    kill_trials("rollback", 13, rollback_fixture, &args, |m, trial| {
        // All or nothing: the head reads as it was or as the snapshot, never a mix.
        let head = m.read("img");
        let old = m.expected("img");
        if head != *old {
            m.same(
                &head,
                &m.points[0].1,
                &format!("{trial}: head after the kill"),
            );
        }
        m.recover(&args, &[], trial);
        let snap = m.points[0].1.clone();
        m.expect("img", snap);
        assert_eq!(m.size("img"), SIZE, "{trial}: size after rollback");
        m.settled(trial);
    });
}

#[test]
fn killed_clone_is_all_or_nothing() {
    let args = ["clone", "p@s", "c"];
    let make = |rng: &mut Rng| {
        let mut m = Model::new();
        m.parent(rng);
        m
    };
    kill_trials("clone", 14, make, &args, |m, trial| {
        // Right after the kill: c is listed exactly when p@s lists it as a child.
        let listed = m.ls().contains(&"c".to_string());
        let child = m.children().contains(&"c".to_string());
        assert_eq!(listed, child, "{trial}: ls and children disagree");
        m.recover(&args, &[EEXIST], trial);
        assert_eq!(m.children(), vec!["c".to_string()], "{trial}: children");
        let base = m.points[0].1.clone();
        m.expect("c", base);
        m.settled(trial);
        // The bookkeeping lets go: rm c, then p@s may be unprotected.
        m.env.ok(&["rm", "c"]);
        m.env.ok(&["snap", "unprotect", "p@s"]);
        m.forget("c");
        m.settled(trial);
    });
}

#[test]
fn killed_rm_is_finished_by_rm() {
    let args = ["rm", "img"];
    let make = |rng: &mut Rng| {
        let mut m = Model::new();
        let (_, model) = m.image("img", SIZE, rng);
        m.expect("img", model);
        m
    };
    kill_trials("rm", 15, make, &args, |m, trial| {
        // Listed means whole: a half-removed image is not shown under its name.
        if m.ls().contains(&"img".to_string()) {
            m.same(
                &m.read("img"),
                &m.points[0].1,
                &format!("{trial}: listed, not whole"),
            );
        }
        m.recover(&args, &[ENOENT], trial);
        m.forget("img");
        assert_eq!(m.trash(), vec![], "{trial}: trash");
        m.settled(trial);
    });
}

#[test]
fn killed_rename_is_finished_by_rename() {
    let args = ["rename", "img", "img2"];
    let make = |rng: &mut Rng| {
        let mut m = Model::new();
        let (_, model) = m.image("img", SIZE, rng);
        m.expect("img", model);
        m
    };
    kill_trials("rename", 19, make, &args, |m, trial| {
        // The names change in one directory write: exactly one is listed.
        let ls = m.ls();
        assert!(ls == ["img"] || ls == ["img2"], "{trial}: ls {ls:?}");
        m.recover(&args, &[ENOENT], trial);
        let bytes = m.expected("img").to_vec();
        m.forget("img");
        m.expect("img2", bytes);
        m.settled(trial);
    });
}

#[test]
fn killed_rm_of_a_clone_lets_the_parent_go() {
    let args = ["rm", "c"];
    let make = |rng: &mut Rng| {
        let mut m = clone_fixture(rng, false);
        let rbd = m.rbd();
        let img = rbd
            .open(&ImageSpec::parse("c", "rbd").expect("spec"), false)
            .expect("open");
        img.snap_remove("cs1").expect("snap rm");
        m.forget("c@cs1");
        m
    };
    kill_trials("rm clone", 16, make, &args, |m, trial| {
        m.recover(&args, &[ENOENT], trial);
        m.forget("c");
        assert_eq!(m.children(), Vec::<String>::new(), "{trial}: children");
        m.settled(trial);
        m.env.ok(&["snap", "unprotect", "p@s"]);
    });
}

/// An image `img` with data; with `trashed`, moved to the trash (returns its id).
fn trash_fixture(rng: &mut Rng, trashed: bool) -> (Model, String) {
    let mut m = Model::new();
    let (img, model) = m.image("img", SIZE, rng);
    let id = img.id().to_string();
    drop(img);
    m.expect("img", model);
    if trashed {
        m.env.ok(&["trash", "mv", "img"]);
    }
    (m, id)
}

/// Exactly one of `ls` and `trash ls` shows the image.
fn in_one_place(m: &Model, id: &str, trial: &str) -> bool {
    let listed = m.ls().contains(&"img".to_string());
    let trashed = m.trash().iter().any(|(t, _)| t == id);
    assert!(
        listed != trashed,
        "{trial}: listed {listed}, in trash {trashed}"
    );
    trashed
}

#[test]
fn killed_trash_moves_are_finished_by_running_them_again() {
    let w = window(&|r| trash_fixture(r, false).0, &["trash", "mv", "img"]);
    run_trials("trash mv/restore/rm", 17, |rng, i| {
        let kind = rng.below(3);
        let (mut m, id) = trash_fixture(rng, kind != 0);
        let trial = format!("trash trial {i} kind {kind} (seed {})", seed(17));
        let args: Vec<&str> = match kind {
            0 => vec!["trash", "mv", "img"],
            1 => vec!["trash", "restore", &id],
            _ => vec!["trash", "rm", &id],
        };
        kill(&m, &args, rng, w);
        if kind != 2 {
            in_one_place(&m, &id, &trial);
        }
        m.recover(&args, &[ENOENT], &trial);
        match kind {
            0 => {
                assert!(in_one_place(&m, &id, &trial), "{trial}: not in the trash");
                m.env.ok(&["trash", "restore", &id]);
            }
            1 => assert!(
                !in_one_place(&m, &id, &trial),
                "{trial}: still in the trash"
            ),
            _ => {
                assert_eq!(m.trash(), vec![], "{trial}: trash");
                m.forget("img");
            }
        }
        m.settled(&trial);
    });
}

#[test]
fn killed_snap_create_is_finished_by_snap_create() {
    let args = ["snap", "create", "img@s2"];
    kill_trials("snap create", 18, resize_fixture, &args, |m, trial| {
        let snaps = m.snaps("img");
        assert!(
            snaps == ["s1"] || snaps == ["s1", "s2"],
            "{trial}: snapshots {snaps:?}"
        );
        m.recover(&args, &[EEXIST], trial);
        assert_eq!(m.snaps("img"), ["s1", "s2"], "{trial}: snapshots");
        let head = m.expected("img").to_vec();
        m.expect("img@s2", head);
        m.settled(trial);
    });
}

#[test]
fn killed_snap_purge_is_finished_by_snap_purge() {
    let args = ["snap", "purge", "img"];
    let make = |rng: &mut Rng| {
        let mut m = resize_fixture(rng);
        let rbd = m.rbd();
        let img = rbd
            .open(&ImageSpec::parse("img", "rbd").expect("spec"), false)
            .expect("open");
        let mut head = m.expected("img").to_vec();
        for s in ["s2", "s3"] {
            img.snap_create(s).expect("snap");
            scribble(&img, &mut head, rng, 4);
        }
        m.expect("img", head);
        m
    };
    kill_trials("snap purge", 19, make, &args, |m, trial| {
        m.recover(&args, &[], trial);
        assert_eq!(m.snaps("img"), Vec::<String>::new(), "{trial}: snapshots");
        m.points.retain(|(s, _)| !s.contains('@'));
        m.settled(trial);
    });
}
