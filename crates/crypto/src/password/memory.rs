//! Argon2 working memory that is reused instead of freed.
//!
//! Argon2 with m=19456 KiB needs 19 MiB of blocks per call. The `argon2` crate's convenience API allocates them and
//! frees them on every call, and glibc copes badly with that: the first free of such an mmapped chunk raises its
//! dynamic mmap threshold above 19 MiB, so later buffers come from the per-thread heap arenas, which keep their pages
//! after the free. Every blocking-pool thread that ever hashed then pins 19 MiB for good, and after a login burst the
//! process sits at hundreds of MiB. A [`MemoryPool`] keeps one buffer per semaphore slot instead, allocated on first
//! need and reused from then on, so argon2 never holds more than `max_concurrent` buffers and never frees one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::Block;
use tokio::sync::OwnedSemaphorePermit;

/// At most one argon2 buffer per semaphore permit, each `blocks` long.
///
/// A buffer is taken only by a task holding a permit ([`MemoryPool::lease`]) and is back in the pool before that
/// permit is released ([`Lease`]'s `Drop`). So when a permit holder finds no free buffer, every existing buffer is
/// held by another permit holder, and the one it allocates keeps the count at or below the number of permits.
pub(super) struct MemoryPool {
    /// Blocks per buffer: `Params::block_count()` of the parameters new hashes use.
    blocks: usize,
    /// Buffers no task is using.
    free: Mutex<Vec<Vec<Block>>>,
    /// Buffers ever allocated, free or leased.
    allocated: AtomicUsize,
}

impl MemoryPool {
    /// An empty pool of buffers of `blocks` blocks each.
    pub(super) fn new(blocks: usize) -> Self {
        Self { blocks, free: Mutex::new(Vec::new()), allocated: AtomicUsize::new(0) }
    }

    /// Blocks per pooled buffer.
    #[cfg(test)]
    pub(super) fn blocks(&self) -> usize {
        self.blocks
    }

    /// Buffers ever allocated, free or leased.
    pub(super) fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Buffers no task is using right now.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        self.lock().len()
    }

    /// A buffer for the holder of `permit`, taken from the pool or, if the pool has not yet grown to one buffer per
    /// permit, allocated (19 MiB written once: call this on a blocking thread).
    pub(super) fn lease(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Lease {
        let pooled = self.lock().pop();
        let memory = pooled.unwrap_or_else(|| self.allocate());
        Lease { memory, pool: Arc::clone(self), _permit: permit }
    }

    /// A new buffer, counted as part of the pool; the caller must [`put`](Self::put) it back.
    pub(super) fn allocate(&self) -> Vec<Block> {
        self.allocated.fetch_add(1, Ordering::Relaxed);
        vec![Block::new(); self.blocks]
    }

    /// Returns a buffer to the pool. Its stale contents do not matter: argon2's first pass overwrites every block
    /// before any is read.
    pub(super) fn put(&self, memory: Vec<Block>) {
        self.lock().push(memory);
    }

    /// The free list. A panic while the lock is held cannot leave it inconsistent (it only ever pushes or pops a
    /// whole buffer), so a poisoned lock is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Block>>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pooled buffer together with the semaphore permit that entitles a task to it.
///
/// Dropping it (also while unwinding from a panic in argon2) puts the buffer back first and releases the permit
/// after: `Drop::drop` runs before the fields are dropped.
pub(super) struct Lease {
    memory: Vec<Block>,
    pool: Arc<MemoryPool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The buffer: `Params::block_count()` blocks of the parameters new hashes use.
    pub(super) fn memory(&mut self) -> &mut [Block] {
        &mut self.memory
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.memory));
    }
}
