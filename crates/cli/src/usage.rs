//! A missing argument worded as `rbd` words it (`rbd: image name was not specified`, exit
//! EINVAL) instead of clap's usage text: scripts and operators grep for rbd's lines.
//!
//! One mapping from the argument's value name to rbd's noun, so every command that takes an
//! image spec (including the ones defined elsewhere) says the same thing.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// rbd's line for the first missing argument of a usage error, if it is one rbd words.
pub fn missing_argument(e: &clap::Error) -> Option<&'static str> {
    if e.kind() != ErrorKind::MissingRequiredArgument {
        return None;
    }
    let first = match e.get(ContextKind::InvalidArg)? {
        ContextValue::Strings(v) => v.first()?.clone(),
        ContextValue::String(s) => s.clone(),
        _ => return None,
    };
    wording(&first)
}

/// `arg` as clap prints it: `<SPEC>`, `<SPEC>...`, `--size <SIZE>`.
fn wording(arg: &str) -> Option<&'static str> {
    if arg.starts_with("--size") {
        return Some("must specify --size <M/G/T>");
    }
    let name = arg
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default();
    Some(match name {
        "SPEC" | "IMAGE_SPEC" | "PARENT_SNAP_SPEC" | "SOURCE" => "image name was not specified",
        "DEST" | "CHILD_SPEC" => "destination image name was not specified",
        "IMAGE_ID_SPEC" => "image id was not specified",
        "PATH" => "path was not specified",
        "KEY" => "metadata key was not specified",
        "VALUE" => "metadata value was not specified",
        "LOCK_ID" => "lock id was not specified",
        "LOCKER" => "locker was not specified",
        "NAME" => "pool name was not specified",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_as_rbd() {
        assert_eq!(wording("<SPEC>"), Some("image name was not specified"));
        assert_eq!(
            wording("<CHILD_SPEC>"),
            Some("destination image name was not specified")
        );
        assert_eq!(
            wording("--size <SIZE>"),
            Some("must specify --size <M/G/T>")
        );
        assert_eq!(
            wording("<IMAGE_SPEC>..."),
            Some("image name was not specified")
        );
        assert_eq!(wording("<WHATEVER>"), None);
    }
}
