//! A set of disjoint, non-adjacent half-open byte ranges.
use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges kept merged: start → end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalSet {
    ranges: BTreeMap<u64, u64>,
}
