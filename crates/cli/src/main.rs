//! `rbdm`: the command line of rbdm, in the style of Ceph's `rbd` (same commands, options,
//! output and errors: one line naming the failed operation and `(errno) strerror`, with the
//! errno as exit status).
//!
//! What it is for: parsing arguments, validating them before anything is touched, calling
//! `rbdm-image`, and printing. What it is not: no image semantics live here.

mod args;
mod bench;
mod clone;
mod ctx;
mod dest;
mod doc;
mod du;
mod fsck;
mod image;
mod layout;
mod listing;
mod lock;
mod meta;
mod migration;
mod nbd;
mod output;
mod pool;
mod scrub;
mod snap;
mod source;
mod status;
mod transfer;
mod trash;
mod usage;

use clap::Parser;

use args::{Cli, Cmd};
use ctx::Ctx;
use output::CmdResult;

/// `--store`, else `$RBDM_STORE`, else `dir://$XDG_DATA_HOME/rbdm` (`~/.local/share/rbdm`).
fn store_uri(cli: &Cli) -> String {
    if let Some(uri) = &cli.store {
        return uri.clone();
    }
    if let Some(uri) = std::env::var_os("RBDM_STORE").filter(|v| !v.is_empty()) {
        return uri.to_string_lossy().into_owned();
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    format!("dir://{}", data_home.join("rbdm").display())
}

fn run(ctx: &Ctx, cmd: &Cmd) -> CmdResult {
    match cmd {
        Cmd::Create(a) => image::create(ctx, a),
        Cmd::Ls(a) => listing::ls(ctx, a),
        Cmd::Info(a) => listing::info(ctx, a),
        Cmd::Rm(a) => image::rm(ctx, a),
        Cmd::Resize(a) => image::resize(ctx, a),
        Cmd::Rename(a) => image::rename(ctx, a),
        Cmd::Snap(c) => snap::run(ctx, c),
        Cmd::Clone(a) => clone::clone(ctx, a),
        Cmd::Flatten(a) => clone::flatten(ctx, a),
        Cmd::Children(a) => clone::children(ctx, a),
        Cmd::Trash(c) => trash::run(ctx, c),
        Cmd::Import(a) => transfer::import(ctx, a),
        Cmd::Export(a) => transfer::export(ctx, a),
        Cmd::Du(a) => du::du(ctx, a),
        Cmd::Scrub(a) => scrub::run(ctx, a),
        Cmd::Diff(a) => du::diff(ctx, a),
        Cmd::ImageMeta(c) => meta::image_meta(ctx, c),
        Cmd::Status(a) => image::status(ctx, a),
        Cmd::Lock(c) => lock::run(ctx, c),
        Cmd::Pool(c) => pool::pool(ctx, c),
        Cmd::Namespace(c) => pool::namespace(ctx, c),
        Cmd::ConfigKey(c) => meta::config_key(ctx, c),
        Cmd::Bench(a) => bench::run(ctx, a),
        Cmd::Nbd(args::NbdCmd::Export(a)) => nbd::export(ctx, a),
        Cmd::Migration(c) => migration::run(ctx, c),
        Cmd::Source(c) => source::run(ctx, c),
        Cmd::Fsck(a) => fsck::run(ctx, a),
    }
}

fn main() {
    // Die quietly on a closed pipe (`rbdm ls | head -1`), as C tools such as rbd do, instead
    // of panicking in println!.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    rbdm_plugins::link();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(line) = usage::missing_argument(&e) {
                eprintln!("rbdm: {line}");
                std::process::exit(libc::EINVAL);
            }
            // Help and version are not errors; a usage error exits EINVAL, as rbd does.
            let code = if e.use_stderr() { libc::EINVAL } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let ctx = Ctx::new(&cli, store_uri(&cli));
    if let Err(fail) = run(&ctx, &cli.cmd) {
        eprintln!("rbdm: {}", fail.msg);
        std::process::exit(fail.code.clamp(1, 255));
    }
}
