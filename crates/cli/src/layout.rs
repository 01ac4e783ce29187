//! Create options from the layout and feature flags (create, clone, import, migration
//! prepare), validated as rbd validates them, and feature names.

use rbdm_image::{features, CreateOptions, Layout};

use crate::args::LayoutArgs;
use crate::output::{byte_u, CmdResult, Fail};

/// Builds create options from the layout flags, validating every one of them (rbd's rules:
/// power-of-two object size 4K..32M, stripe unit a factor of the object size, both or neither
/// of stripe unit and count, known features with their dependencies). `base` is a layout to
/// start from (a format-2 import's header), whose stripe unit is narrowed to fit a smaller
/// `--object-size` instead of refusing it.
pub fn create_options(
    a: &LayoutArgs,
    size: u64,
    base: Option<Layout>,
    base_features: Option<u64>,
) -> CmdResult<CreateOptions> {
    match a.image_format {
        None | Some(2) => {}
        Some(1) => {
            return Err(Fail::invalid(
                "image format 1 is not supported, only format 2",
            ))
        }
        Some(n) => return Err(Fail::invalid(format!("unknown image format {n}"))),
    }
    let layout = layout_from_args(a, base)?;
    let features = match (a.features.is_empty(), base_features) {
        (false, _) => Some(a.features.iter().fold(0, |acc, f| acc | f)),
        (true, Some(f)) => Some(
            f & !(features::STRIPINGV2
                | features::DATA_POOL
                | features::OPERATIONS
                | features::MIGRATING),
        ),
        (true, None) => None,
    };
    if let Some(f) = features {
        check_feature_deps(f)?;
    }
    if let Some(pool) = &a.data_pool {
        if pool.is_empty() || pool.contains('/') || pool.contains('@') {
            return Err(Fail::invalid(format!("invalid data pool name '{pool}'")));
        }
    }
    Ok(CreateOptions {
        size,
        layout,
        features,
        data_pool: a.data_pool.clone(),
    })
}

fn layout_from_args(a: &LayoutArgs, base: Option<Layout>) -> CmdResult<Option<Layout>> {
    if a.stripe_unit.is_some() != a.stripe_count.is_some() && base.is_none() {
        return Err(Fail::invalid(
            "must specify both (or neither) of stripe-unit and stripe-count",
        ));
    }
    let object_size = match (a.order, a.object_size) {
        (Some(order), _) => {
            if !(rbdm_extent::layout::MIN_ORDER..=rbdm_extent::layout::MAX_ORDER).contains(&order) {
                return Err(Fail::invalid(format!(
                    "order {order} must be in the range [12, 25]"
                )));
            }
            Some(1u64 << order)
        }
        (None, size) => size,
    };
    if object_size.is_none() && a.stripe_unit.is_none() && a.stripe_count.is_none() {
        return Ok(base);
    }
    let base = base.unwrap_or_default();
    let object_size = object_size.unwrap_or(base.object_size);
    if !object_size.is_power_of_two() || !(4096..=32 << 20).contains(&object_size) {
        return Err(Fail::invalid(format!(
            "object size {} is not a power of two between 4 KiB and 32 MiB",
            byte_u(object_size)
        )));
    }
    let (unit, count) = match (a.stripe_unit, a.stripe_count) {
        (None, None) if base.is_striped() => (base.stripe_unit.min(object_size), base.stripe_count),
        (None, None) => (object_size, 1),
        (unit, count) => (
            unit.unwrap_or(base.stripe_unit.min(object_size)),
            count.unwrap_or(base.stripe_count),
        ),
    };
    if count == 0 {
        return Err(Fail::invalid("stripe count must be at least 1"));
    }
    if unit == 0 || unit > object_size || object_size % unit != 0 {
        return Err(Fail::invalid(format!(
            "stripe unit {} is not a factor of the object size {}",
            byte_u(unit),
            byte_u(object_size)
        )));
    }
    Layout::new(object_size, unit, count)
        .map(Some)
        .map_err(|e| Fail::invalid(e.to_string()))
}

fn feature_name(bit: u64) -> &'static str {
    features::NAMES
        .iter()
        .find(|(_, b)| *b == bit)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

fn check_feature_deps(f: u64) -> CmdResult {
    let deps = [
        (features::OBJECT_MAP, features::EXCLUSIVE_LOCK),
        (features::FAST_DIFF, features::OBJECT_MAP),
        (features::JOURNALING, features::EXCLUSIVE_LOCK),
    ];
    for (feature, needs) in deps {
        if f & feature != 0 && f & needs == 0 {
            return Err(Fail::invalid(format!(
                "image feature {} requires {}",
                feature_name(feature),
                feature_name(needs)
            )));
        }
    }
    Ok(())
}

pub fn feature_names(mask: u64) -> Vec<&'static str> {
    features::NAMES
        .iter()
        .filter(|(_, bit)| mask & bit != 0)
        .map(|(n, _)| *n)
        .collect()
}
