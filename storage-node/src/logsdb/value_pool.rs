//! [`ValuePool`]: record-value buffers handed back by the writer threads once a group commit
//! has copied them into its `WriteBatch`, for the next stores to encode into.
//!
//! Every store encodes its record values on the caller's thread and a writer thread drops them
//! after the commit. Allocated on one thread and freed on another, each value cost the
//! allocator a lock of the caller's arena on both sides (glibc's per-thread caches only take
//! small blocks; a record value of 1 KiB or more bypasses them), which the profile of
//! `tally bench storage` showed as a few percent of LogsDB's CPU per record. Recycling them
//! skips the allocator altogether. Bounded: only buffers up to [`MAX_BUFFER_BYTES`] are kept,
//! and at most [`MAX_POOL_BYTES`] of them in all; anything else is freed as before.

use std::sync::Mutex;

/// Largest buffer capacity kept (larger values are rare and would pin memory).
pub(crate) const MAX_BUFFER_BYTES: usize = 16 << 10;
/// Most bytes of buffer capacity the pool holds (enough for the values of a few thousand
/// 1 KiB stores in flight).
pub(crate) const MAX_POOL_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub(crate) struct ValuePool {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    bufs: Vec<Vec<u8>>,
    /// Sum of the capacities of `bufs`.
    bytes: usize,
}

impl ValuePool {
    /// An empty buffer with room for `len` bytes: a recycled one if the pool has one, else a
    /// new allocation.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if len <= MAX_BUFFER_BYTES {
            let recycled = {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                let buf = inner.bufs.pop();
                if let Some(b) = &buf {
                    inner.bytes -= b.capacity();
                }
                buf
            };
            if let Some(mut buf) = recycled {
                buf.clear();
                buf.reserve(len);
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// Keeps `bufs` for later stores, within the pool's bounds (the rest is freed).
    pub(crate) fn give_back(&self, bufs: impl IntoIterator<Item = Vec<u8>>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for buf in bufs {
            let cap = buf.capacity();
            if cap == 0 || cap > MAX_BUFFER_BYTES || inner.bytes + cap > MAX_POOL_BYTES {
                continue;
            }
            inner.bytes += cap;
            inner.bufs.push(buf);
        }
    }

    /// Bytes of buffer capacity held (tests).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_cleared_buffers() {
        let pool = ValuePool::default();
        let mut a = pool.take(100);
        a.extend_from_slice(&[7; 100]);
        let ptr = a.as_ptr();
        pool.give_back([a]);
        let b = pool.take(50);
        assert!(b.is_empty(), "a recycled buffer comes back empty");
        assert_eq!(b.as_ptr(), ptr, "the same allocation is reused");
        assert!(b.capacity() >= 100);
        assert_eq!(pool.held_bytes(), 0);
        // A recycled buffer smaller than asked grows to the size asked.
        pool.give_back([b]);
        assert!(pool.take(1000).capacity() >= 1000);
    }

    #[test]
    fn stays_within_its_bounds() {
        let pool = ValuePool::default();
        pool.give_back([Vec::with_capacity(MAX_BUFFER_BYTES + 1), Vec::new()]);
        assert_eq!(
            pool.held_bytes(),
            0,
            "oversized and empty buffers are not kept"
        );
        let n = MAX_POOL_BYTES / MAX_BUFFER_BYTES;
        pool.give_back((0..n + 5).map(|_| Vec::with_capacity(MAX_BUFFER_BYTES)));
        assert!(pool.held_bytes() <= MAX_POOL_BYTES);
        assert!(pool.held_bytes() >= MAX_POOL_BYTES - MAX_BUFFER_BYTES);
        // A value larger than any kept buffer never takes one from the pool.
        let held = pool.held_bytes();
        let big = pool.take(MAX_BUFFER_BYTES + 1);
        assert!(big.capacity() > MAX_BUFFER_BYTES);
        assert_eq!(pool.held_bytes(), held);
    }
}
