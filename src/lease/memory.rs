//! Giving freed memory back to the system after a mass end of leases.
//!
//! A hundred thousand credential leases cost the process ~160 MiB; when a
//! `revoke-prefix` ends them all, the maps that held them keep their
//! capacity and glibc's allocator keeps the freed chunks in its arenas, so
//! the resident size stayed where it was (178 MiB, against 16.5 MiB before
//! the leases). The maps shrink themselves (`registry`, the revoker's
//! queue); what the allocator keeps is handed back here with
//! `malloc_trim`, which returns every wholly free page of every arena, not
//! only the top of the heap. Other C libraries (musl) return freed pages on
//! their own, and this is a no-op there.

/// Roles revoked since the last trim above which a drained revoker trims:
/// below it the freed memory is a few hundred KiB and not worth a pass over
/// the heap.
pub const TRIM_AFTER: usize = 10_000;

/// Returns freed heap pages to the system, on a blocking thread (the pass
/// walks every arena, holding its lock), and logs the resident size before
/// and after with what the allocator still has in use: what a trim cannot
/// return is either live or fragments of pages that are partly live.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        let before = resident_kib();
        // SAFETY: malloc_trim and mallinfo2 only walk the allocator's own
        // arenas under their locks; they take no pointer of ours.
        let (_, in_use) = unsafe { (libc::malloc_trim(0), libc::mallinfo2()) };
        let mib = |kib: Option<u64>| kib.map_or(-1.0, |k| k as f64 / 1024.0);
        tracing::info!(
            resident_before_mib = format!("{:.1}", mib(before)),
            resident_after_mib = format!("{:.1}", mib(resident_kib())),
            in_use_mib = format!(
                "{:.1}",
                (in_use.uordblks + in_use.hblkhd) as f64 / 1048576.0
            ),
            "freed memory returned to the system"
        );
    });
}

/// This process's resident set (`VmRSS`), in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
