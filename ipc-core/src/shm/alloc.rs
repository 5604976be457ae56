//! A first-fit range allocator for offsets inside a segment (blob pools),
//! with coalescing. Private memory only: it never touches the segment.

use std::collections::BTreeMap;

/// Free ranges of `[start, end)`, keyed by start; adjacent ranges are always
/// merged, so the map holds no two touching ranges.
#[derive(Debug, Clone)]
pub struct RangeAlloc {
    free: BTreeMap<u64, u64>,
    align: u64,
    free_bytes: u64,
}

impl RangeAlloc {
    /// An allocator handing out `[start, end)`, in multiples of `align` (a
    /// power of two), every range starting at a multiple of `align`.
    pub fn new(start: u64, end: u64, align: u64) -> Self {
        debug_assert!(align.is_power_of_two() && start.is_multiple_of(align));
        let end = end & !(align - 1);
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end - start);
        }
        Self {
            free,
            align,
            free_bytes: end.saturating_sub(start),
        }
    }

    /// The size actually reserved for a request of `len` bytes (at least one
    /// unit, so that every blob has a distinct offset).
    pub fn rounded(&self, len: u64) -> Option<u64> {
        len.max(1)
            .checked_add(self.align - 1)
            .map(|n| n & !(self.align - 1))
    }

    /// Reserves `len` bytes (rounded up); returns the start.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let need = self.rounded(len)?;
        let (&start, &size) = self.free.iter().find(|&(_, &size)| size >= need)?;
        self.free.remove(&start);
        if size > need {
            self.free.insert(start + need, size - need);
        }
        self.free_bytes -= need;
        Some(start)
    }

    /// Gives back the range `alloc(len)` returned at `start`.
    pub fn free(&mut self, start: u64, len: u64) {
        let Some(mut size) = self.rounded(len) else {
            return;
        };
        self.free_bytes += size;
        let mut start = start;
        // Merge with the range after it.
        if let Some(next) = self.free.remove(&(start + size)) {
            size += next;
        }
        // And with the one before it.
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back()
            && prev + prev_len == start
        {
            self.free.remove(&prev);
            start = prev;
            size += prev_len;
        }
        self.free.insert(start, size);
    }

    /// Bytes not reserved.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::RangeAlloc;

    #[test]
    fn alloc_free_coalesces_back_to_one_range() {
        let mut a = RangeAlloc::new(4096, 4096 + 1024, 64);
        let x = a.alloc(100).unwrap();
        let y = a.alloc(64).unwrap();
        let z = a.alloc(1).unwrap();
        assert_eq!((x, y, z), (4096, 4096 + 128, 4096 + 192));
        assert_eq!(a.free_bytes(), 1024 - 256);
        a.free(y, 64);
        // A hole of 64 is reused first-fit.
        assert_eq!(a.alloc(10), Some(y));
        a.free(y, 10);
        a.free(x, 100);
        a.free(z, 1);
        assert_eq!(a.free_bytes(), 1024);
        assert_eq!(a.free.len(), 1);
        assert!(a.alloc(1024).is_some());
        assert!(a.alloc(1).is_none());
    }

    #[test]
    fn too_large_fails_without_change() {
        let mut a = RangeAlloc::new(0, 640, 64);
        assert!(a.alloc(641).is_none());
        assert!(a.alloc(u64::MAX).is_none());
        assert_eq!(a.free_bytes(), 640);
    }
}
