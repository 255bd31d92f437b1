//! Giving freed memory back to the system after a mass end of leases.
//!
//! A hundred thousand credential leases cost the process ~160 MiB; when a
//! `revoke-prefix` ends them all, the maps that held them keep their
//! capacity and glibc's allocator keeps the freed chunks in its arenas, so
//! the resident size stayed where it was (178 MiB, against 16.5 MiB before
//! the leases). The maps shrink themselves (`lease::registry`, the
//! revoker's queue); what the allocator keeps is handed back here with
//! `malloc_trim`, which returns every wholly free page of every arena, not
//! only the top of the heap. Other C libraries (musl) return freed pages on
//! their own, and this is a no-op there.

/// Roles revoked since the last trim above which a drained revoker trims:
/// below it the freed memory is a few hundred KiB and not worth a pass over
/// the heap.
pub const TRIM_AFTER: usize = 10_000;

/// Returns freed heap pages to the system, on a blocking thread (the pass
/// walks every arena, holding its lock).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only walks and trims the allocator's own
        // arenas under their locks; it takes no pointer of ours.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            "freed memory returned to the system"
        );
    });
}
