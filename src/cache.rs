//! Cache hints for the fan-out loop, whose every `send` evicts the next
//! subscribers' state from the CPU's cache (see `TopicActor::send_batch`).

/// A hint to the CPU to load the cache line at `address`; it never faults.
pub fn prefetch(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
