//! The process's memory allocator: large blocks straight from `mmap`, the rest from the system
//! allocator.
//!
//! A TCP flow owns two large rings (`Limits::tcp_buffer` bytes each) that an idle flow never
//! writes. glibc serves such a block with its own mmap too (above `M_MMAP_THRESHOLD`), but it
//! keeps a 16-byte chunk header right in front of the block, in the mapping's first page, so
//! every ring costs one resident page even while untouched: 8 KiB per idle flow, 80 MiB for
//! 10 000 held connections. Here a block of at least [`LARGE`] bytes is a bare anonymous
//! mapping: the kernel's zero pages back it until a byte is written (so `alloc_zeroed` is free),
//! and `dealloc` unmaps it, so a closed flow's memory goes back to the kernel at once.
//!
//! Invariants: whether a block is "large" depends only on its layout's size, which Rust passes
//! unchanged to `dealloc` and (as the old layout) to `realloc`, so a block is always returned to
//! the allocator that made it. Alignments above a page go to the system allocator.
//!
//! Not done: no caching of mappings (a flow's rings are a few syscalls next to its socket,
//! connect and epoll registration).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Blocks of at least this many bytes get their own mapping. The transmit queue's 64 KiB frame
/// buffers stay below it: they are recycled, and a syscall each would cost more than it saves.
pub const LARGE: usize = 128 * 1024;

const PAGE: usize = 4096;

/// `#[global_allocator]` in the tapir binary.
pub struct MappedLarge;

fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no existing
    // memory; failure is reported as MAP_FAILED and turned into null (allocation failure).
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: large blocks are fresh page-aligned mappings of at least `size` bytes, owned by the
// caller until `dealloc` unmaps exactly them; everything else is delegated to `System` with the
// same layouts (see the module invariants).
unsafe impl GlobalAlloc for MappedLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract (non-zero size) is passed on unchanged.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            // Anonymous mappings read as zeros.
            map(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout) {
            // SAFETY: `ptr` came from `map(layout.size())` (same layout, see the invariants)
            // and the caller no longer uses it.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(layout), is_large(new_layout)) {
            (false, false) => {
                // SAFETY: `ptr` came from `System` with `layout`.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
            (true, true) => {
                // SAFETY: `ptr` is a mapping of `layout.size()` bytes; MREMAP_MAYMOVE keeps
                // its contents and returns MAP_FAILED (left untouched) on failure.
                let p = unsafe {
                    libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if p == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // SAFETY: `new_layout` has a non-zero size (the caller's contract).
                let p = unsafe { self.alloc(new_layout) };
                if !p.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and do not overlap;
                    // the old one is ours to free.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                p
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn resident_pages(p: *mut u8, len: usize) -> usize {
        let pages = len.div_ceil(PAGE);
        let mut vec = vec![0u8; pages];
        // SAFETY: `p` is a page-aligned mapping of `len` bytes and `vec` has one byte per page.
        let r = unsafe { libc::mincore(p.cast(), len, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn large_zeroed_blocks_stay_unresident_until_written() {
        let a = MappedLarge;
        let layout = Layout::from_size_align(1 << 20, 1).unwrap();
        // SAFETY: a non-zero layout; the block is freed with the same layout below.
        let p = unsafe { a.alloc_zeroed(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % PAGE, 0);
        assert_eq!(resident_pages(p, layout.size()), 0);
        // SAFETY: inside the block.
        unsafe {
            assert_eq!(*p.add(12345), 0);
            *p.add(PAGE * 3) = 7;
        }
        assert_eq!(resident_pages(p, layout.size()), 1);
        // SAFETY: allocated above with this layout.
        unsafe { a.dealloc(p, layout) };
    }

    #[test]
    fn realloc_keeps_contents_across_the_threshold() {
        let a = MappedLarge;
        let small = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: non-zero layouts; every pointer is used within its current size and freed
        // with its current layout.
        unsafe {
            let p = a.alloc(small);
            p.write_bytes(0xab, 1000);
            let p = a.realloc(p, small, LARGE * 2);
            assert!(!p.is_null());
            assert_eq!(*p.add(999), 0xab);
            p.add(LARGE * 2 - 1).write(0xcd);
            let large = Layout::from_size_align(LARGE * 2, 8).unwrap();
            let p = a.realloc(p, large, LARGE * 5);
            assert_eq!((*p, *p.add(LARGE * 2 - 1)), (0xab, 0xcd));
            let larger = Layout::from_size_align(LARGE * 5, 8).unwrap();
            let p = a.realloc(p, larger, 10);
            assert_eq!(*p.add(9), 0xab);
            a.dealloc(p, Layout::from_size_align(10, 8).unwrap());
        }
    }
}
