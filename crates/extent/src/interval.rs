//! A set of disjoint, non-adjacent half-open byte ranges.
use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges kept merged: start → end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalSet {
    ranges: BTreeMap<u64, u64>,
}

impl IntervalSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut set = Self::new();
        for (off, len) in ranges {
            set.insert(off, len);
        }
        set
    }

    /// Adds `[offset, offset + len)`, merging with overlapping or touching ranges.
    pub fn insert(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (mut start, mut end) = (offset, offset + len);
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let absorbed: Vec<u64> = self.ranges.range(start..=end).map(|(&s, _)| s).collect();
        for s in absorbed {
            let e = self.ranges.remove(&s).unwrap_or(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes `[offset, offset + len)`, splitting ranges that straddle it.
    pub fn remove(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = offset + len;
        let hit: Vec<(u64, u64)> = self.overlapping(offset, end).collect();
        for (s, e) in hit {
            self.ranges.remove(&s);
            if s < offset {
                self.ranges.insert(s, offset);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
        }
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = match self.ranges.range(..=start).next_back() {
            Some((&s, &e)) if e > start => s,
            _ => start,
        };
        self.ranges
            .range(first..end)
            .map(|(&s, &e)| (s, e))
            .filter(move |&(_, e)| e > start)
    }

    /// True if every byte of `[offset, offset + len)` is in the set.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        matches!(self.ranges.range(..=offset).next_back(), Some((_, &e)) if e >= offset + len)
    }

    /// True if any byte of `[offset, offset + len)` is in the set.
    pub fn intersects(&self, offset: u64, len: u64) -> bool {
        len > 0 && self.overlapping(offset, offset + len).next().is_some()
    }

    /// The parts of `[offset, offset + len)` in the set, as `(offset, len)`.
    pub fn intersection(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let end = offset + len;
        self.overlapping(offset, end)
            .map(|(s, e)| (s.max(offset), e.min(end)))
            .map(|(s, e)| (s, e - s))
            .collect()
    }

    /// The set restricted to `[offset, offset + len)`.
    pub fn clip(&self, offset: u64, len: u64) -> IntervalSet {
        IntervalSet::from_ranges(self.intersection(offset, len))
    }

    /// The parts of `[offset, offset + len)` not in the set.
    pub fn gaps(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = offset;
        for (s, l) in self.intersection(offset, len) {
            if s > pos {
                out.push((pos, s - pos));
            }
            pos = s + l;
        }
        if pos < offset + len {
            out.push((pos, offset + len - pos));
        }
        out
    }

    /// Ranges as `(offset, len)`, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e - s))
    }

    /// Total bytes in the set.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn clear(&mut self) {
        self.ranges.clear()
    }

    pub fn union_with(&mut self, other: &IntervalSet) {
        for (off, len) in other.iter() {
            self.insert(off, len);
        }
    }

    pub fn subtract(&mut self, other: &IntervalSet) {
        for (off, len) in other.iter() {
            self.remove(off, len);
        }
    }
}
