//! Integration tests for `ipc_core::shm`: the create/seal/send/open flow, and
//! THE SEAL TEST — a holder of a read-only descriptor of a sealed segment
//! cannot obtain write access by any route. Every refusal is checked by errno.

use std::ffi::c_void;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr;

use ipc_core::shm::{
    Access, HEADER_SIZE, MapError, OpenError, OpenExpect, SealError, Seals, Segment, check_header,
    init_header,
};
use ipc_core::sync::Ordering;
use rustix::fs::{FallocateFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

const MAGIC: u64 = 0x4352_4144_4c45_5348;
const VERSION: u32 = 1;
const LEN: usize = 4 * 4096;
const PATTERN: u8 = 0xA5;
const SERVER_SEALS: Seals = Seals::SHRINK
    .union(Seals::GROW)
    .union(Seals::FUTURE_WRITE)
    .union(Seals::SEAL);

// ---- helpers ---------------------------------------------------------------

/// A raw mapping made by the test itself (to try what `Mapping` won't do).
struct RawMap {
    ptr: *mut u8,
    len: usize,
}

impl RawMap {
    fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: ProtFlags,
        flags: MapFlags,
    ) -> Result<RawMap, Errno> {
        // SAFETY: null hint, fresh range; owned and unmapped by RawMap::drop.
        let p = unsafe { rustix::mm::mmap(ptr::null_mut(), len, prot, flags, fd, 0) }?;
        Ok(RawMap { ptr: p.cast(), len })
    }

    fn mprotect(&self, flags: MprotectFlags) -> Result<(), Errno> {
        // SAFETY: the range is a mapping this RawMap owns.
        unsafe { rustix::mm::mprotect(self.ptr.cast::<c_void>(), self.len, flags) }
    }

    fn read(&self, offset: usize) -> u8 {
        assert!(offset < self.len);
        // SAFETY: in bounds of a live readable mapping; volatile, no reference.
        unsafe { self.ptr.add(offset).read_volatile() }
    }

    fn write(&self, offset: usize, value: u8) {
        assert!(offset < self.len);
        // SAFETY: in bounds of a live mapping the caller made writable.
        unsafe { self.ptr.add(offset).write_volatile(value) }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: unmapping the range this RawMap owns.
        unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) }.expect("munmap");
    }
}

fn read_byte(map: &ipc_core::shm::Mapping, offset: usize) -> u8 {
    assert!(offset < map.len());
    // SAFETY: in bounds of a live mapping; volatile copy, no reference.
    unsafe { map.as_ptr().add(offset).read_volatile() }
}

fn write_byte(map: &ipc_core::shm::Mapping, offset: usize, value: u8) {
    assert!(offset < map.len());
    let p = map.as_mut_ptr().expect("writable mapping");
    // SAFETY: in bounds of a live read-write mapping.
    unsafe { p.add(offset).write_volatile(value) }
}

fn errno(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// The server side: create, map RW, init header, fill the payload, seal.
/// Returns the segment and the creator's pre-existing RW mapping.
fn server_segment(seals: Seals) -> (Segment, ipc_core::shm::Mapping) {
    let seg = Segment::create("shm_segment", LEN).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    init_header(&rw, MAGIC, VERSION, 0).unwrap();
    for off in HEADER_SIZE..LEN {
        write_byte(&rw, off, PATTERN);
    }
    seg.add_seals(seals).unwrap();
    (seg, rw)
}

/// Reopen `/proc/self/fd/N` with `flags`: the route around a read-only fd.
fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn fresh_ro_view(fd: BorrowedFd<'_>) -> RawMap {
    RawMap::new(fd, LEN, ProtFlags::READ, MapFlags::SHARED).unwrap()
}

/// Every write route a holder of `ro_fd` could try, each refused with the
/// errno the kernel documents. Shared by the FUTURE_WRITE and WRITE tests.
fn assert_no_write_route(ro_fd: BorrowedFd<'_>) {
    let shared_rw = ProtFlags::READ | ProtFlags::WRITE;

    // The read-only fd itself: no writable shared mapping (fd not writable),
    // no pwrite/write (EBADF), no seals (EPERM: F_ADD_SEALS needs FMODE_WRITE).
    assert_eq!(
        RawMap::new(ro_fd, LEN, shared_rw, MapFlags::SHARED).err(),
        Some(Errno::ACCESS)
    );
    assert_eq!(
        rustix::io::pwrite(ro_fd, &[1], 200).err(),
        Some(Errno::BADF)
    );
    assert_eq!(
        rustix::fs::fcntl_add_seals(ro_fd, rustix::fs::SealFlags::WRITE).err(),
        Some(Errno::PERM)
    );

    // A read-only shared mapping cannot be upgraded: the kernel cleared
    // VM_MAYWRITE for it.
    let ro_view = fresh_ro_view(ro_fd);
    assert_eq!(
        ro_view
            .mprotect(MprotectFlags::READ | MprotectFlags::WRITE)
            .err(),
        Some(Errno::ACCESS)
    );

    // Reopening /proc/self/fd/N read-write SUCCEEDS (memfds are mode 0777):
    // the fd's read-only mode is no boundary; only the seals are.
    let rw_fd = reopen(ro_fd, OFlags::RDWR).expect("reopen read-write succeeds");
    let rw_fd = rw_fd.as_fd();
    assert_eq!(
        RawMap::new(rw_fd, LEN, shared_rw, MapFlags::SHARED).err(),
        Some(Errno::PERM),
        "writable MAP_SHARED via reopened fd"
    );
    assert_eq!(
        RawMap::new(rw_fd, LEN, ProtFlags::WRITE, MapFlags::SHARED).err(),
        Some(Errno::PERM),
        "write-only MAP_SHARED via reopened fd"
    );
    let view = RawMap::new(rw_fd, LEN, ProtFlags::READ, MapFlags::SHARED).unwrap();
    assert_eq!(
        view.mprotect(MprotectFlags::READ | MprotectFlags::WRITE)
            .err(),
        Some(Errno::ACCESS),
        "mprotect upgrade of a read-only MAP_SHARED from a read-write fd"
    );
    drop(view);
    assert_eq!(
        rustix::io::pwrite(rw_fd, &[1], 200).err(),
        Some(Errno::PERM)
    );
    assert_eq!(rustix::io::write(rw_fd, &[1]).err(), Some(Errno::PERM));
    assert_eq!(
        rustix::fs::ftruncate(rw_fd, (LEN / 2) as u64).err(),
        Some(Errno::PERM),
        "shrink"
    );
    assert_eq!(
        rustix::fs::ftruncate(rw_fd, (LEN * 2) as u64).err(),
        Some(Errno::PERM),
        "grow"
    );
    assert_eq!(
        rustix::fs::ftruncate(rw_fd, 0).err(),
        Some(Errno::PERM),
        "truncate to 0"
    );
    assert_eq!(
        rustix::fs::fallocate(
            rw_fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            4096,
            4096
        )
        .err(),
        Some(Errno::PERM),
        "punch hole (would zero the bytes)"
    );
    assert_eq!(
        rustix::fs::fallocate(rw_fd, FallocateFlags::empty(), 0, (LEN * 2) as u64).err(),
        Some(Errno::PERM),
        "fallocate growing the file"
    );
    // fallocate inside the file (mode 0) is allowed by the kernel: it only
    // allocates backing for holes and never changes a byte (checked below).
    assert_eq!(
        rustix::fs::fallocate(rw_fd, FallocateFlags::empty(), 0, LEN as u64),
        Ok(())
    );
    for seal in [
        rustix::fs::SealFlags::SEAL,
        rustix::fs::SealFlags::WRITE,
        rustix::fs::SealFlags::EXEC,
    ] {
        assert_eq!(
            rustix::fs::fcntl_add_seals(rw_fd, seal).err(),
            Some(Errno::PERM),
            "F_ADD_SEALS {seal:?} after F_SEAL_SEAL"
        );
    }
    // O_TRUNC on open is a truncation too.
    assert_eq!(
        reopen(ro_fd, OFlags::RDWR | OFlags::TRUNC).err(),
        Some(Errno::PERM),
        "open O_TRUNC"
    );

    // MAP_PRIVATE + PROT_WRITE is allowed (even from the read-only fd), but
    // it is copy-on-write: the writer sees its write, nobody else does.
    for fd in [ro_fd, rw_fd] {
        let private = RawMap::new(fd, LEN, shared_rw, MapFlags::PRIVATE).unwrap();
        private.write(HEADER_SIZE, !PATTERN);
        private.write(0, 0);
        assert_eq!(private.read(HEADER_SIZE), !PATTERN);
        let fresh = fresh_ro_view(ro_fd);
        assert_eq!(fresh.read(HEADER_SIZE), PATTERN, "COW write leaked");
        assert_eq!(fresh.read(0), MAGIC.to_ne_bytes()[0], "COW write leaked");
    }

    // After all of that, the segment's bytes and size are unchanged.
    let fresh = fresh_ro_view(ro_fd);
    for off in HEADER_SIZE..LEN {
        assert_eq!(fresh.read(off), PATTERN, "byte {off} changed");
    }
    assert_eq!(rustix::fs::fstat(ro_fd).unwrap().st_size, LEN as i64);
}

// ---- tests -----------------------------------------------------------------

#[test]
fn shm_rw_write_ro_read_back() {
    let seg = Segment::create("rw-ro", LEN).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    let ro = seg.map(Access::ReadOnly).unwrap();
    assert!(ro.as_mut_ptr().is_none());
    for (i, off) in (HEADER_SIZE..LEN).step_by(97).enumerate() {
        write_byte(&rw, off, i as u8);
    }
    rw.atomic_u64(HEADER_SIZE + 8)
        .unwrap()
        .store(0x0102_0304_0506_0708, Ordering::Release);
    for (i, off) in (HEADER_SIZE..LEN).step_by(97).enumerate() {
        if !(HEADER_SIZE + 8..HEADER_SIZE + 16).contains(&off) {
            assert_eq!(read_byte(&ro, off), i as u8);
        }
    }
    assert_eq!(
        ro.load_u64(HEADER_SIZE + 8, Ordering::Acquire),
        Ok(0x0102_0304_0506_0708)
    );
    // A mapping of another descriptor of the same memfd sees it too.
    let other = Segment::from_fd(seg.read_only_fd().unwrap()).unwrap();
    let view = other.map(Access::ReadOnly).unwrap();
    assert_eq!(read_byte(&view, HEADER_SIZE), 0);
    assert_eq!(read_byte(&view, HEADER_SIZE + 97), 1);
}

#[test]
fn shm_server_to_reader_open() {
    let (seg, rw) = server_segment(SERVER_SEALS);
    let fd = seg.read_only_fd().unwrap();
    let expect = OpenExpect::exact(MAGIC, VERSION, LEN).seals(SERVER_SEALS);
    let (reader, map) = Segment::open(fd, &expect).unwrap();
    assert_eq!(reader.len(), LEN);
    assert_eq!(read_byte(&map, LEN - 1), PATTERN);
    assert_eq!(
        check_header(&map, MAGIC, VERSION, Some(0))
            .unwrap()
            .segment_len,
        LEN as u64
    );
    // The creator's writes are visible to the reader.
    write_byte(&rw, LEN - 1, 7);
    assert_eq!(read_byte(&map, LEN - 1), 7);
}

#[test]
fn shm_open_rejects() {
    let expect = OpenExpect::exact(MAGIC, VERSION, LEN).seals(SERVER_SEALS);

    let (_r, w) = rustix::pipe::pipe().unwrap();
    assert!(matches!(
        Segment::open(w, &expect),
        Err(OpenError::NotARegularFile)
    ));
    let null =
        rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap();
    assert!(matches!(
        Segment::open(null, &expect),
        Err(OpenError::NotARegularFile)
    ));

    let (seg, _rw) = server_segment(SERVER_SEALS);
    let wrong = OpenExpect::exact(MAGIC, VERSION, LEN - 4096);
    assert!(matches!(
        Segment::open(seg.read_only_fd().unwrap(), &wrong),
        Err(OpenError::SizeMismatch { .. })
    ));
    assert!(matches!(
        Segment::open(
            seg.read_only_fd().unwrap(),
            &OpenExpect::exact(MAGIC ^ 1, VERSION, LEN)
        ),
        Err(OpenError::BadMagic { found: MAGIC })
    ));
    assert!(matches!(
        Segment::open(
            seg.read_only_fd().unwrap(),
            &OpenExpect::exact(MAGIC, 9, LEN)
        ),
        Err(OpenError::VersionMismatch {
            expected: 9,
            found: VERSION
        })
    ));
    assert!(matches!(
        Segment::open(seg.read_only_fd().unwrap(), &expect.seals(Seals::WRITE)),
        Err(OpenError::MissingSeals { .. })
    ));

    let (seg, _rw) = server_segment(Seals::SHRINK | Seals::GROW);
    assert!(matches!(
        Segment::open(seg.read_only_fd().unwrap(), &expect),
        Err(OpenError::MissingSeals { required: SERVER_SEALS, actual }) if actual == Seals::SHRINK | Seals::GROW
    ));

    let seg = Segment::create("uninit", LEN).unwrap();
    {
        let rw = seg.map(Access::ReadWrite).unwrap();
        rw.atomic_u64(0).unwrap().store(MAGIC, Ordering::Relaxed);
    }
    seg.add_seals(SERVER_SEALS).unwrap();
    assert!(matches!(
        Segment::open(seg.read_only_fd().unwrap(), &expect),
        Err(OpenError::NotInitialized)
    ));
}

/// THE SEAL TEST: `SHRINK | GROW | FUTURE_WRITE | SEAL`.
///
/// A reader holding only a read-only descriptor gets no write access by any
/// route; the creator's RW mapping made *before* sealing keeps working, and
/// even the creator cannot make a new one. That is why the creator of every
/// segment must be the server, which maps, seals, and only then sends fds.
#[test]
fn shm_seal_future_write_blocks_every_write_route() {
    let (seg, creator_rw) = server_segment(SERVER_SEALS);
    assert_eq!(seg.seals().unwrap(), SERVER_SEALS);
    let ro_fd = seg.read_only_fd().unwrap();

    assert_no_write_route(ro_fd.as_fd());

    // Even the creator's own fd: no new writable mapping, no write().
    match seg.map(Access::ReadWrite) {
        Err(MapError::WriteDenied(e)) => assert_eq!(errno(&e), Some(Errno::PERM)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rustix::io::pwrite(seg.fd(), &[1], 200).err(),
        Some(Errno::PERM)
    );
    match seg.add_seals(Seals::WRITE) {
        Err(SealError::NotPermitted(e)) => assert_eq!(errno(&e), Some(Errno::PERM)),
        other => panic!("{other:?}"),
    }

    // FUTURE_WRITE semantics: the pre-existing RW mapping still writes, and
    // readers see it.
    write_byte(&creator_rw, HEADER_SIZE + 1, 0x42);
    let view = fresh_ro_view(ro_fd.as_fd());
    assert_eq!(view.read(HEADER_SIZE + 1), 0x42);
}

/// `F_SEAL_WRITE`: refused (EBUSY) while a writable shared mapping exists,
/// accepted once it is gone; then the same routes are closed.
#[test]
fn shm_seal_write_busy_then_blocks_every_write_route() {
    let seg = Segment::create("seal-write", LEN).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    init_header(&rw, MAGIC, VERSION, 0).unwrap();
    for off in HEADER_SIZE..LEN {
        write_byte(&rw, off, PATTERN);
    }
    match seg.add_seals(Seals::WRITE) {
        Err(SealError::Busy(e)) => assert_eq!(errno(&e), Some(Errno::BUSY)),
        other => panic!("{other:?}"),
    }
    drop(rw);
    // A read-only MAP_SHARED made through the read-write fd still counts as
    // writable (it keeps VM_MAYWRITE, so mprotect could upgrade it): EBUSY.
    let ro_via_rw_fd = seg.map(Access::ReadOnly).unwrap();
    match seg.add_seals(Seals::WRITE) {
        Err(SealError::Busy(e)) => assert_eq!(errno(&e), Some(Errno::BUSY)),
        other => panic!("{other:?}"),
    }
    drop(ro_via_rw_fd);
    // A writable MAP_PRIVATE mapping does not count (copy-on-write), nor does a
    // read-only MAP_SHARED made through a read-only fd.
    let private = RawMap::new(
        seg.fd(),
        LEN,
        ProtFlags::READ | ProtFlags::WRITE,
        MapFlags::PRIVATE,
    )
    .unwrap();
    let reader = Segment::from_fd(seg.read_only_fd().unwrap()).unwrap();
    let ro_map = reader.map(Access::ReadOnly).unwrap();
    seg.add_seals(Seals::WRITE | Seals::SHRINK | Seals::GROW | Seals::SEAL)
        .unwrap();
    drop(private);
    assert_eq!(read_byte(&ro_map, HEADER_SIZE), PATTERN);
    // ...and with WRITE in place, that mapping cannot be upgraded.
    // SAFETY: the range is the live mapping `ro_map` owns; on success it would
    // only change its protection (the test expects failure).
    let r = unsafe {
        rustix::mm::mprotect(
            ro_map.as_ptr() as *mut c_void,
            ro_map.len(),
            MprotectFlags::READ | MprotectFlags::WRITE,
        )
    };
    assert_eq!(r.err(), Some(Errno::ACCESS));

    let ro_fd = seg.read_only_fd().unwrap();
    assert_no_write_route(ro_fd.as_fd());
    match seg.map(Access::ReadWrite) {
        Err(MapError::WriteDenied(e)) => assert_eq!(errno(&e), Some(Errno::PERM)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rustix::io::pwrite(seg.fd(), &[1], 200).err(),
        Some(Errno::PERM)
    );

    let expect = OpenExpect::exact(MAGIC, VERSION, LEN).seals(Seals::WRITE | Seals::SEAL);
    let (_reader, map) = Segment::open(ro_fd, &expect).unwrap();
    assert_eq!(read_byte(&map, LEN - 1), PATTERN);
}

/// The blob path: `FUTURE_WRITE` first (readers may map), `WRITE` at the end.
/// A read-only shared mapping made after `FUTURE_WRITE` no longer blocks
/// `F_SEAL_WRITE` (the kernel cleared its VM_MAYWRITE), but the writer's own
/// RW mapping does until it is unmapped.
#[test]
fn shm_future_write_then_write_seal() {
    let seg = Segment::create("blob", LEN).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE)
        .unwrap();
    let ro_via_rw_fd = seg.map(Access::ReadOnly).unwrap();
    match seg.add_seals(Seals::WRITE) {
        Err(SealError::Busy(e)) => assert_eq!(errno(&e), Some(Errno::BUSY)),
        other => panic!("{other:?}"),
    }
    drop(rw);
    seg.add_seals(Seals::WRITE | Seals::SEAL).unwrap();
    drop(ro_via_rw_fd);
    assert!(
        seg.seals()
            .unwrap()
            .contains(Seals::WRITE | Seals::FUTURE_WRITE | Seals::SEAL)
    );
}
