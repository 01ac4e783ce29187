//! The command line, as `rbd` spells it: commands, options, and the value parsers that
//! reject a bad size, suffix or feature name before anything is opened.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "rbdm",
    version,
    about = "Manage rbdm block images, in the style of Ceph's rbd"
)]
pub struct Cli {
    /// Store URI: dir:///PATH or mem:// [env: RBDM_STORE; default dir://$XDG_DATA_HOME/rbdm]
    #[arg(long, global = true, value_name = "URI")]
    pub store: Option<String>,
    /// Pool name (default: rbd)
    #[arg(short = 'p', long, global = true, value_name = "POOL")]
    pub pool: Option<String>,
    /// Namespace name
    #[arg(long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Destination pool name (clone, migration prepare; -p names the source's pool)
    #[arg(long, global = true, value_name = "POOL")]
    pub dest_pool: Option<String>,
    /// Destination namespace name
    #[arg(long, global = true, value_name = "NAMESPACE")]
    pub dest_namespace: Option<String>,
    /// Output format for listings and status
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,
    /// Pretty formatting (json and xml)
    #[arg(long, global = true)]
    pub pretty_format: bool,
    /// Disable progress output
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Plain,
    Json,
    Xml,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create an empty image.
    Create(CreateArgs),
    /// List rbd images.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show information about image size, striping, etc.
    Info(SpecArg),
    /// Delete an image.
    #[command(visible_alias = "remove")]
    Rm(SpecArg),
    /// Resize (expand or shrink) an image.
    Resize(ResizeArgs),
    /// Rename an image.
    #[command(visible_alias = "mv")]
    Rename(TwoSpecs),
    /// Snapshot management.
    #[command(subcommand)]
    Snap(SnapCmd),
    /// Clone a protected snapshot into a copy-on-write child image.
    Clone(CloneArgs),
    /// Fill a clone with its parent's data, making it independent.
    Flatten(SpecArg),
    /// Display children of an image or its snapshot.
    Children(SpecArg),
    /// Trash management.
    #[command(subcommand)]
    Trash(TrashCmd),
    /// Import an image from a file (or '-' for stdin).
    Import(ImportArgs),
    /// Export an image to a file (or '-' for stdout).
    Export(ExportArgs),
    /// Show disk usage stats for a pool, image or snapshot.
    #[command(visible_alias = "disk-usage")]
    Du(DuArgs),
    /// Check a pool's data and metadata against their checksums.
    Scrub(ScrubArgs),
    /// Print extents that differ since a previous snapshot, or image creation.
    Diff(DiffArgs),
    /// Image metadata management.
    #[command(subcommand)]
    ImageMeta(MetaCmd),
    /// Show the status of an image (its watchers).
    Status(SpecArg),
    /// Advisory image locks (fencing), as `rbd lock`.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Pool management.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Namespace management.
    #[command(subcommand)]
    Namespace(NsCmd),
    /// Store-wide key/value settings.
    #[command(subcommand)]
    ConfigKey(ConfigKeyCmd),
    /// Simple benchmark; holds the image open while it runs. Writes fill IO block i
    /// (offset i * io-size) with the byte (i mod 256) ^ 0x5a.
    Bench(BenchArgs),
    /// Serve an image over NBD.
    #[command(subcommand)]
    Nbd(NbdCmd),
    /// Live migration of an image.
    #[command(subcommand)]
    Migration(MigrationCmd),
    /// Look at a migration source (a source-spec) before migrating it.
    #[command(subcommand)]
    Source(SourceCmd),
    /// List objects in the store that no image owns (exit non-zero if any).
    Fsck(FsckArgs),
}

#[derive(Args, Debug)]
pub struct SpecArg {
    /// [pool/[namespace/]]image[@snap]
    #[arg(value_name = "SPEC")]
    pub spec: String,
}

#[derive(Args, Debug)]
pub struct TwoSpecs {
    #[arg(value_name = "SOURCE")]
    pub src: String,
    #[arg(value_name = "DEST")]
    pub dest: String,
}

/// Layout and feature options shared by create, clone and import.
#[derive(Args, Debug, Default, Clone)]
pub struct LayoutArgs {
    /// Object size in B/K/M (power of two, 4K..32M)
    #[arg(long, value_parser = parse_bytes, conflicts_with = "order", value_name = "SIZE")]
    pub object_size: Option<u64>,
    /// Object order [12 <= order <= 25]
    #[arg(long, value_name = "ORDER")]
    pub order: Option<u8>,
    /// Stripe unit in B/K/M
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub stripe_unit: Option<u64>,
    /// Stripe count
    #[arg(long, value_name = "COUNT")]
    pub stripe_count: Option<u64>,
    /// Image features (repeatable, or a comma list): layering, exclusive-lock, object-map,
    /// fast-diff, deep-flatten, journaling, striping, data-pool
    #[arg(long = "image-feature", value_delimiter = ',', value_parser = parse_feature, value_name = "FEATURE")]
    pub features: Vec<u64>,
    /// Data pool
    #[arg(long, value_name = "POOL")]
    pub data_pool: Option<String>,
    /// Image format (only 2 is supported)
    #[arg(long, value_name = "FORMAT")]
    pub image_format: Option<u8>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Image size in M/G/T (default unit M)
    #[arg(short = 's', long, value_parser = parse_size_mib, required = true, value_name = "SIZE")]
    pub size: Option<u64>,
    #[command(flatten)]
    pub layout: LayoutArgs,
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Long listing format
    #[arg(short = 'l', long)]
    pub long: bool,
    /// pool[/namespace]
    #[arg(value_name = "POOL_SPEC")]
    pub pool_spec: Option<String>,
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// New size in M/G/T (default unit M)
    #[arg(short = 's', long, value_parser = parse_size_mib, required = true, value_name = "SIZE")]
    pub size: Option<u64>,
    /// Permit shrinking
    #[arg(long)]
    pub allow_shrink: bool,
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
}

#[derive(Subcommand, Debug)]
pub enum SnapCmd {
    /// Create a snapshot.
    #[command(visible_alias = "add")]
    Create(SpecArg),
    /// Dump list of image snapshots.
    #[command(visible_alias = "list")]
    Ls(SpecArg),
    /// Delete a snapshot.
    #[command(visible_alias = "remove")]
    Rm(SpecArg),
    /// Prevent a snapshot from being deleted.
    Protect(SpecArg),
    /// Allow a snapshot to be deleted.
    Unprotect(SpecArg),
    /// Rollback image to snapshot.
    #[command(visible_alias = "revert")]
    Rollback(SpecArg),
    /// Delete all unprotected snapshots.
    Purge(SpecArg),
    /// Rename a snapshot.
    Rename(TwoSpecs),
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    /// Parent snapshot: [pool/[namespace/]]image@snap
    #[arg(value_name = "PARENT_SNAP_SPEC")]
    pub parent: String,
    /// Child: [pool/[namespace/]]image
    #[arg(value_name = "CHILD_SPEC")]
    pub child: String,
    #[command(flatten)]
    pub layout: LayoutArgs,
}

#[derive(Subcommand, Debug)]
pub enum TrashCmd {
    /// Move an image to the trash.
    #[command(visible_alias = "move")]
    Mv(SpecArg),
    /// List trash images.
    #[command(visible_alias = "list")]
    Ls(TrashLsArgs),
    /// Restore an image from the trash.
    Restore(TrashRestoreArgs),
    /// Remove an image from the trash.
    #[command(visible_alias = "remove")]
    Rm(TrashRmArgs),
}

#[derive(Args, Debug)]
pub struct TrashLsArgs {
    /// List images from all sources
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Long listing format
    #[arg(short = 'l', long)]
    pub long: bool,
    #[arg(value_name = "POOL_SPEC")]
    pub pool_spec: Option<String>,
}

#[derive(Args, Debug)]
pub struct TrashRestoreArgs {
    /// [pool/[namespace/]]image-id
    #[arg(value_name = "IMAGE_ID_SPEC")]
    pub spec: String,
    /// Restore under this name
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
}

#[derive(Args, Debug)]
pub struct TrashRmArgs {
    /// [pool/[namespace/]]image-id
    #[arg(value_name = "IMAGE_ID_SPEC")]
    pub spec: String,
    /// Remove even before the deferment time
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// 1 (raw) or 2 (rbd export format v2)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2), value_name = "FORMAT")]
    pub export_format: u8,
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// File to import, or '-' for stdin
    #[arg(value_name = "PATH")]
    pub path: String,
    /// Destination [pool/[namespace/]]image (default: the file's name)
    #[arg(value_name = "IMAGE_SPEC")]
    pub dest: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// 1 (raw) or 2 (rbd export format v2, with snapshots)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2), value_name = "FORMAT")]
    pub export_format: u8,
    /// [pool/[namespace/]]image[@snap]
    #[arg(value_name = "SPEC")]
    pub spec: String,
    /// Output file, or '-' for stdout
    #[arg(value_name = "PATH")]
    pub path: String,
}

#[derive(Args, Debug)]
pub struct DuArgs {
    /// Start from this snapshot
    #[arg(long = "from-snap", value_name = "SNAP")]
    pub from_snap: Option<String>,
    /// [pool/[namespace/]]image[@snap]; all images of the pool when absent
    #[arg(value_name = "SPEC")]
    pub spec: Option<String>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Start from this snapshot
    #[arg(long = "from-snap", value_name = "SNAP")]
    pub from_snap: Option<String>,
    /// Compare whole objects
    #[arg(long)]
    pub whole_object: bool,
    #[arg(value_name = "SPEC")]
    pub spec: String,
}

#[derive(Subcommand, Debug)]
pub enum MetaCmd {
    /// Set image metadata key with value.
    Set(MetaSetArgs),
    /// Image metadata get the value associated with the key.
    Get(MetaKeyArgs),
    /// Image metadata remove the key and value associated.
    #[command(visible_alias = "remove")]
    Rm(MetaKeyArgs),
    /// Image metadata list keys with values.
    #[command(visible_alias = "list")]
    Ls(SpecArg),
}

#[derive(Args, Debug)]
pub struct MetaSetArgs {
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
    pub key: String,
    pub value: String,
}

#[derive(Args, Debug)]
pub struct MetaKeyArgs {
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
    pub key: String,
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create a pool.
    Create(NameArg),
    /// Initialise a pool for RBD (writes `rbd_info`, as `rbd pool init`).
    Init(NameArg),
    /// List pools.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a pool.
    #[command(visible_alias = "remove")]
    Rm(PoolRmArgs),
}

#[derive(Args, Debug)]
pub struct NameArg {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct PoolRmArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Remove even if it still holds images
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum NsCmd {
    /// Create an RBD image namespace.
    Create(NsSpecArg),
    /// List RBD image namespaces.
    #[command(visible_alias = "list")]
    Ls(NsListArg),
    /// Remove an RBD image namespace.
    #[command(visible_alias = "remove")]
    Rm(NsSpecArg),
}

#[derive(Args, Debug)]
pub struct NsSpecArg {
    /// pool/namespace (or use --pool and --namespace)
    #[arg(value_name = "NAMESPACE_SPEC")]
    pub spec: Option<String>,
}

#[derive(Args, Debug)]
pub struct NsListArg {
    #[arg(value_name = "POOL")]
    pub pool: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigKeyCmd {
    /// Set a key (to VALUE, or to the contents of --in-file).
    Set(ConfigSetArgs),
    /// Print a key's value.
    Get(KeyArg),
    /// Remove a key.
    #[command(visible_aliases = ["del", "remove"])]
    Rm(KeyArg),
    /// List keys.
    #[command(visible_alias = "list")]
    Ls,
}

#[derive(Args, Debug)]
pub struct ConfigSetArgs {
    pub key: String,
    #[arg(required_unless_present = "in_file", conflicts_with = "in_file")]
    pub value: Option<String>,
    /// Read the value from a file
    #[arg(short = 'i', long, value_name = "FILE")]
    pub in_file: Option<String>,
}

#[derive(Args, Debug)]
pub struct KeyArg {
    pub key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoType {
    Read,
    Write,
    Readwrite,
    Rw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoPattern {
    Seq,
    Rand,
}

/// Writes are deterministic so tests can predict an image's contents: IO block `i` (the
/// bytes at `i * io_size`) is filled with `(i as u8) ^ 0x5a`; `seq` walks blocks from offset
/// 0 and wraps at the image size; `rand` picks block `hash(op) % blocks`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, required = true, value_name = "TYPE")]
    pub io_type: Option<IoType>,
    /// IO size in B/K/M
    #[arg(long, value_parser = parse_bytes, default_value = "4K", value_name = "SIZE")]
    pub io_size: u64,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024), value_name = "N")]
    pub io_threads: u64,
    /// Total bytes in B/K/M/G/T
    #[arg(long, value_parser = parse_bytes, default_value = "1G", value_name = "SIZE")]
    pub io_total: u64,
    #[arg(long, value_enum, default_value = "seq", value_name = "PATTERN")]
    pub io_pattern: IoPattern,
    /// Read proportion in readwrite (0 <= mix <= 100)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100), value_name = "PERCENT")]
    pub rw_mix_read: u8,
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
}

/// Sizes as Ceph's `strict_iecstrtoll`: digits then an optional B/K/M/G/T/P/E unit, which may
/// be written K, Ki, KB or KiB. `default_shift` applies to a bare number.
pub fn parse_size(s: &str, default_shift: u32) -> Result<u64, String> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size (expected a number with an optional B/K/M/G/T/P/E suffix)"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size '{s}' is too large"))?;
    let shift = match unit {
        "" => default_shift,
        "B" => 0,
        _ => {
            let mut chars = unit.chars();
            let prefix = chars.next().unwrap_or('?');
            let rest: String = chars.collect();
            let shift = match prefix {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => {
                    return Err(format!(
                        "size '{s}' has an unknown suffix '{unit}' (expected B/K/M/G/T/P/E)"
                    ))
                }
            };
            if !matches!(rest.as_str(), "" | "i" | "B" | "iB") {
                return Err(format!(
                    "size '{s}' has an unknown suffix '{unit}' (expected B/K/M/G/T/P/E)"
                ));
            }
            shift
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// `--size`: a bare number is MiB, as in rbd.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    parse_size(s, 20)
}

/// Object sizes, stripe units and IO sizes: a bare number is bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size(s, 0)
}

/// Features a user may ask for; `operations` and `migrating` are internal, as in Ceph.
fn settable_features() -> impl Iterator<Item = &'static (&'static str, u64)> {
    use rbdm_image::features::{MIGRATING, NAMES, OPERATIONS};
    NAMES
        .iter()
        .filter(|(_, bit)| *bit != OPERATIONS && *bit != MIGRATING)
}

/// A feature name (as `rbd info` prints them) or a numeric feature mask.
pub fn parse_feature(s: &str) -> Result<u64, String> {
    if let Ok(mask) = s.parse::<u64>() {
        let known = settable_features().fold(0, |acc, (_, bit)| acc | bit);
        if mask & !known != 0 {
            return Err(format!(
                "feature mask {mask} has unknown bits {:#x}",
                mask & !known
            ));
        }
        return Ok(mask);
    }
    settable_features()
        .find(|(name, _)| *name == s)
        .map(|(_, bit)| *bit)
        .ok_or_else(|| {
            let names: Vec<&str> = settable_features().map(|(n, _)| *n).collect();
            format!("unknown image feature '{s}' (known: {})", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_rbd() {
        assert_eq!(parse_size_mib("10"), Ok(10 << 20));
        assert_eq!(parse_size_mib("1G"), Ok(1 << 30));
        assert_eq!(parse_size_mib("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size_mib("4K"), Ok(4096));
        assert_eq!(parse_size_mib("512B"), Ok(512));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        for bad in ["", "G", "1Q", "1.5G", "-1", "1g", "1GG", "99999999999E"] {
            assert!(parse_size_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn features_by_name_or_mask() {
        assert_eq!(parse_feature("layering"), Ok(1));
        assert_eq!(parse_feature("3"), Ok(3));
        assert!(parse_feature("bogus").is_err());
        assert!(parse_feature("4096").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[derive(Subcommand, Debug)]
pub enum NbdCmd {
    /// Export IMAGE[@SNAP] over NBD in the foreground until SIGINT/SIGTERM (a snapshot is
    /// exported read-only). Prints the export's URI on stdout.
    Export(NbdExportArgs),
}

#[derive(Args, Debug)]
pub struct NbdExportArgs {
    /// image specification [pool/[namespace/]]image[@snap]
    pub image: String,
    /// TCP address to listen on, e.g. 127.0.0.1:10809 (port 0 picks a free one)
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// Unix socket to listen on
    #[arg(long, value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
    /// Refuse writes
    #[arg(long)]
    pub read_only: bool,
    /// The export name clients ask for (default: the image spec, pool/[namespace/]image[@snap])
    #[arg(long, value_name = "NAME")]
    pub export_name: Option<String>,
    /// Require TLS (NBD STARTTLS), with this server certificate (PEM; intermediates after it)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM, unencrypted)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Also require client certificates signed by a CA in this file (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum MigrationCmd {
    /// Prepare a migration: SOURCE [DEST]; or --import-only SOURCE@SNAP DEST, or
    /// --import-only --source-spec(-path) DEST.
    Prepare(MigrationPrepareArgs),
    /// Copy the source into the destination (resumable).
    Execute(MigrationExecuteArgs),
    /// Finish an executed migration: unlink, and remove the source.
    Commit(MigrationCommitArgs),
    /// Cancel a migration: the source is restored with what clients wrote.
    Abort(SpecArg),
}

#[derive(Args, Debug)]
pub struct MigrationPrepareArgs {
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// Import from an external source described by a source-spec
    #[arg(long)]
    pub import_only: bool,
    /// The source-spec JSON
    #[arg(long, value_name = "JSON")]
    pub source_spec: Option<String>,
    /// A file holding the source-spec JSON, or - for stdin
    #[arg(long, value_name = "PATH")]
    pub source_spec_path: Option<String>,
    /// Copy the parent's data too, so the destination has no parent
    #[arg(long)]
    pub flatten: bool,
    /// SOURCE_IMAGE [DEST_IMAGE]; with --import-only SOURCE_IMAGE@SNAP DEST_IMAGE (a native
    /// source-spec of that snapshot), or DEST_IMAGE alone with --source-spec(-path)
    #[arg(value_name = "IMAGE_SPEC", num_args = 1..)]
    pub specs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MigrationExecuteArgs {
    /// Objects copied at once
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Read at most this many bytes per second from the source (e.g. 100M)
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub bandwidth_limit: Option<u64>,
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
}

#[derive(Args, Debug)]
pub struct MigrationCommitArgs {
    /// Re-point the source's clone children to the destination
    #[arg(long)]
    pub force: bool,
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
}

#[derive(Subcommand, Debug)]
pub enum LockCmd {
    /// Show locks held on an image.
    #[command(visible_alias = "list")]
    Ls(LockLsArgs),
    /// Take a lock on an image.
    Add(LockAddArgs),
    /// Release a lock on an image.
    #[command(visible_alias = "remove")]
    Rm(LockRmArgs),
}

#[derive(Args, Debug)]
pub struct LockLsArgs {
    /// [pool/[namespace/]]image
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
}

#[derive(Args, Debug)]
pub struct LockAddArgs {
    /// Take a shared lock under this tag (others with the same tag may share it)
    #[arg(long, value_name = "TAG")]
    pub shared: Option<String>,
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
    /// Unique lock id
    #[arg(value_name = "LOCK_ID")]
    pub id: String,
}

#[derive(Args, Debug)]
pub struct LockRmArgs {
    #[arg(value_name = "IMAGE_SPEC")]
    pub spec: String,
    /// The lock id, as `lock ls` shows it
    #[arg(value_name = "LOCK_ID")]
    pub id: String,
    /// The locker, `client.<n>` as `lock ls` shows it
    #[arg(value_name = "LOCKER")]
    pub locker: String,
}

#[derive(Subcommand, Debug)]
pub enum SourceCmd {
    /// Show a source's format, size and snapshots.
    Info(SourceSpecArgs),
    /// Print the source's data and zero extents as JSON, as `qemu-img map --output=json` does.
    Map(MapArgs),
    /// Write the source's bytes (at its head or a snapshot) to a file, or '-' for stdout.
    Export(SourceExportArgs),
    /// List the formats and streams this binary can read.
    Plugins,
}

#[derive(Args, Debug)]
pub struct SourceSpecArgs {
    /// The source-spec, as JSON
    #[arg(
        long,
        value_name = "JSON",
        conflicts_with = "source_spec_path",
        required_unless_present = "source_spec_path"
    )]
    pub source_spec: Option<String>,
    /// A file holding the source-spec, or '-' for stdin
    #[arg(long, value_name = "FILE")]
    pub source_spec_path: Option<String>,
}

#[derive(Args, Debug)]
pub struct MapArgs {
    #[command(flatten)]
    pub spec: SourceSpecArgs,
    /// Map this snapshot of the source instead of its head
    #[arg(long, value_name = "NAME")]
    pub snap: Option<String>,
}

#[derive(Args, Debug)]
pub struct SourceExportArgs {
    #[command(flatten)]
    pub spec: SourceSpecArgs,
    /// Export this snapshot of the source instead of its head
    #[arg(long, value_name = "NAME")]
    pub snap: Option<String>,
    /// Output file (never overwritten), or '-' for stdout
    #[arg(value_name = "PATH")]
    pub path: String,
}

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// Pool to check; every pool when absent
    #[arg(value_name = "POOL")]
    pub pool: Option<String>,
}

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// The pool to check (default: every pool)
    pub pool: Option<String>,
}
