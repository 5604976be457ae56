//! Unit tests: one per reachable error variant of create, seal, map, init,
//! header check and open, plus the typed-offset helpers.
//!
//! Not reachable from a test: `CreateError::Resize` (ftruncate only fails
//! past `RLIMIT_FSIZE`, which kills the process with `SIGXFSZ`, or on ENOMEM),
//! `SealError::Other`, `OpenError::Stat` (fstat of a valid fd does not fail on
//! 64-bit Linux) and `OpenError::TooLarge` (a file size fits `isize`).

use std::os::fd::OwnedFd;

use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::io::Errno;

use super::*;
use crate::sync::Ordering;

const MAGIC: u64 = 0x5445_5354_5345_4721;
const VERSION: u32 = 2;
const KIND: u32 = 5;
const LEN: usize = 8192;
const SEALED: Seals = Seals::SHRINK
    .union(Seals::GROW)
    .union(Seals::FUTURE_WRITE)
    .union(Seals::SEAL);

fn errno_of(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// A segment of `len` bytes with an initialised header, sealed with `seals`;
/// returns a read-only fd of it.
fn sealed_segment(len: usize, seals: Seals) -> (Segment, OwnedFd) {
    let seg = Segment::create("unit", len).expect("create");
    {
        let map = seg.map(Access::ReadWrite).expect("map rw");
        init_header(&map, MAGIC, VERSION, KIND).expect("init");
    }
    seg.add_seals(seals).expect("seal");
    let fd = seg.read_only_fd().expect("ro fd");
    (seg, fd)
}

fn expect() -> OpenExpect {
    OpenExpect::exact(MAGIC, VERSION, LEN).seals(SEALED)
}

// ---- compile-time properties ----------------------------------------------

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Mapping>();
    send_sync::<Segment>();
};

// ---- create ------------------------------------------------------------

#[test]
fn create_ok_is_zeroed_and_sized() {
    let seg = Segment::create("ok", LEN).unwrap();
    assert_eq!(seg.len(), LEN);
    assert!(!seg.is_empty());
    let map = seg.map(Access::ReadOnly).unwrap();
    assert_eq!(map.load_u64(LEN - 8, Ordering::Relaxed), Ok(0));
    // A fresh memfd allows sealing and carries no seal yet.
    assert_eq!(seg.seals().unwrap(), Seals::EMPTY);
}

#[test]
fn create_zero_length() {
    assert!(matches!(
        Segment::create("z", 0),
        Err(CreateError::ZeroLength)
    ));
}

#[test]
fn create_too_large() {
    let e = Segment::create("big", usize::MAX).unwrap_err();
    assert!(
        matches!(e, CreateError::TooLarge { len: usize::MAX, max } if max == MAX_SEGMENT_LEN),
        "{e:?}"
    );
}

#[test]
fn create_name_with_nul() {
    assert!(matches!(
        Segment::create("a\0b", 4096),
        Err(CreateError::NameHasNul)
    ));
}

#[test]
fn create_name_too_long() {
    let ok = "n".repeat(MAX_NAME_LEN);
    Segment::create(&ok, 4096).expect("249-byte name is accepted");
    let long = "n".repeat(MAX_NAME_LEN + 1);
    assert!(matches!(
        Segment::create(&long, 4096),
        Err(CreateError::NameTooLong { len: 250, max: 249 })
    ));
}

/// `CreateError::Memfd`: run in a child process (this test binary again) whose
/// `RLIMIT_NOFILE` is 0, so `memfd_create` fails with `EMFILE`.
#[test]
fn create_memfd_failure() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "shm::tests::create_memfd_failure_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("CRADLE_SHM_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    // Guard against a renamed test silently matching nothing.
    assert!(stdout.contains("1 passed"), "child did not run: {stdout}");
}

#[test]
#[ignore = "run by create_memfd_failure in a child process"]
fn create_memfd_failure_child() {
    if std::env::var_os("CRADLE_SHM_CHILD").is_none() {
        return;
    }
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(0),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let res = Segment::create("emfile", 4096);
    setrlimit(Resource::Nofile, old).unwrap();
    match res {
        Err(CreateError::Memfd(e)) => assert_eq!(errno_of(&e), Some(Errno::MFILE)),
        other => panic!("expected Memfd(EMFILE), got {other:?}"),
    }
}

// ---- seals -------------------------------------------------------------

#[test]
fn seals_accumulate_and_debug() {
    let seg = Segment::create("s", 4096).unwrap();
    seg.add_seals(Seals::SHRINK).unwrap();
    seg.add_seals(Seals::GROW).unwrap();
    let s = seg.seals().unwrap();
    assert!(s.contains(Seals::SHRINK | Seals::GROW));
    assert!(!s.contains(Seals::SEAL));
    assert_eq!(format!("{s:?}"), "Seals(SHRINK | GROW)");
    assert_eq!(
        format!("{:?}", Seals::from_bits(1 << 20)),
        "Seals(0x100000)"
    );
    assert_eq!(format!("{:?}", Seals::EMPTY), "Seals(EMPTY)");
}

#[test]
fn seal_not_permitted_after_seal_seal() {
    let seg = Segment::create("s", 4096).unwrap();
    seg.add_seals(Seals::SEAL).unwrap();
    match seg.add_seals(Seals::GROW) {
        Err(SealError::NotPermitted(e)) => assert_eq!(errno_of(&e), Some(Errno::PERM)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn seal_busy_with_writable_mapping() {
    let seg = Segment::create("s", 4096).unwrap();
    let map = seg.map(Access::ReadWrite).unwrap();
    match seg.add_seals(Seals::WRITE) {
        Err(SealError::Busy(e)) => assert_eq!(errno_of(&e), Some(Errno::BUSY)),
        other => panic!("{other:?}"),
    }
    drop(map);
    seg.add_seals(Seals::WRITE).unwrap();
}

#[test]
fn seal_unsupported_bit() {
    let seg = Segment::create("s", 4096).unwrap();
    match seg.add_seals(Seals::from_bits(1 << 20)) {
        Err(SealError::Unsupported(e)) => assert_eq!(errno_of(&e), Some(Errno::INVAL)),
        other => panic!("{other:?}"),
    }
}

// ---- map ---------------------------------------------------------------

#[test]
fn map_write_denied_after_future_write() {
    let seg = Segment::create("m", 4096).unwrap();
    seg.add_seals(Seals::FUTURE_WRITE).unwrap();
    match seg.map(Access::ReadWrite) {
        Err(MapError::WriteDenied(e)) => assert_eq!(errno_of(&e), Some(Errno::PERM)),
        other => panic!("{other:?}"),
    }
    // Reading is still fine.
    seg.map(Access::ReadOnly).unwrap();
}

#[test]
fn map_write_denied_on_read_only_fd() {
    let seg = Segment::create("m", 4096).unwrap();
    let ro = Segment::from_fd(seg.read_only_fd().unwrap()).unwrap();
    match ro.map(Access::ReadWrite) {
        Err(MapError::WriteDenied(e)) => assert_eq!(errno_of(&e), Some(Errno::ACCESS)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn map_zero_length_fails() {
    let fd = rustix::fs::memfd_create("empty", MemfdFlags::CLOEXEC).unwrap();
    let seg = Segment::from_fd(fd).unwrap();
    assert!(seg.is_empty());
    match seg.map(Access::ReadOnly) {
        Err(MapError::Mmap(e)) => assert_eq!(errno_of(&e), Some(Errno::INVAL)),
        other => panic!("{other:?}"),
    }
}

// ---- mapping offsets ---------------------------------------------------

#[test]
fn mapping_offsets_checked() {
    let seg = Segment::create("o", 4096).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    let ro = seg.map(Access::ReadOnly).unwrap();
    assert!(ro.as_mut_ptr().is_none());
    assert!(rw.as_mut_ptr().is_some());
    assert_eq!(ro.access(), Access::ReadOnly);

    rw.atomic_u32(4092).unwrap().store(7, Ordering::Relaxed);
    rw.atomic_u64(4088).unwrap().fetch_add(0, Ordering::Relaxed);
    assert_eq!(ro.load_u32(4092, Ordering::Relaxed), Ok(7));

    assert_eq!(
        rw.atomic_u32(4093).err(),
        Some(OffsetError::OutOfRange {
            offset: 4093,
            size: 4,
            len: 4096
        })
    );
    assert_eq!(
        ro.load_u64(4096, Ordering::Relaxed),
        Err(OffsetError::OutOfRange {
            offset: 4096,
            size: 8,
            len: 4096
        })
    );
    assert!(matches!(
        rw.ptr_at::<u64>(usize::MAX - 3),
        Err(OffsetError::OutOfRange { .. })
    ));
    assert_eq!(
        rw.atomic_u64(4).err(),
        Some(OffsetError::Unaligned {
            offset: 4,
            align: 8
        })
    );
    assert_eq!(
        ro.load_u32(2, Ordering::Relaxed),
        Err(OffsetError::Unaligned {
            offset: 2,
            align: 4
        })
    );
    assert_eq!(ro.atomic_u32(0).err(), Some(OffsetError::ReadOnly));
    assert_eq!(ro.atomic_u64(0).err(), Some(OffsetError::ReadOnly));
    assert!(ro.ptr_at::<[u8; 4096]>(0).is_ok());
    assert!(ro.ptr_at::<[u8; 4097]>(0).is_err());
}

// ---- init_header / check_header ---------------------------------------

#[test]
fn init_and_check_header() {
    let seg = Segment::create("h", LEN).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    init_header(&rw, MAGIC, VERSION, KIND).unwrap();
    let ro = seg.map(Access::ReadOnly).unwrap();
    assert_eq!(
        check_header(&ro, MAGIC, VERSION, Some(KIND)),
        Ok(HeaderInfo {
            magic: MAGIC,
            version: VERSION,
            kind: KIND,
            segment_len: LEN as u64,
        })
    );
    // Raw layout: the documented offsets hold the documented values.
    assert_eq!(ro.load_u64(0, Ordering::Relaxed), Ok(MAGIC));
    assert_eq!(ro.load_u32(8, Ordering::Relaxed), Ok(VERSION));
    assert_eq!(ro.load_u32(12, Ordering::Relaxed), Ok(KIND));
    assert_eq!(ro.load_u64(16, Ordering::Relaxed), Ok(LEN as u64));
}

#[test]
fn init_header_errors() {
    let seg = Segment::create("h", 4096).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    let ro = seg.map(Access::ReadOnly).unwrap();
    assert_eq!(init_header(&rw, MAGIC, 0, 0), Err(InitError::ZeroVersion));
    assert_eq!(init_header(&ro, MAGIC, 1, 0), Err(InitError::ReadOnly));
    let small = Segment::create("h", 64).unwrap();
    let small = small.map(Access::ReadWrite).unwrap();
    assert_eq!(
        init_header(&small, MAGIC, 1, 0),
        Err(InitError::TooSmall { len: 64 })
    );
    // Nothing was written by the failed calls.
    assert_eq!(rw.load_u64(0, Ordering::Relaxed), Ok(0));
}

#[test]
fn check_header_errors() {
    let seg = Segment::create("h", 4096).unwrap();
    let rw = seg.map(Access::ReadWrite).unwrap();
    assert_eq!(
        check_header(&rw, MAGIC, VERSION, None),
        Err(HeaderError::BadMagic {
            expected: MAGIC,
            found: 0
        })
    );
    rw.atomic_u64(SegmentHeader::MAGIC_OFFSET)
        .unwrap()
        .store(MAGIC, Ordering::Relaxed);
    assert_eq!(
        check_header(&rw, MAGIC, VERSION, None),
        Err(HeaderError::NotInitialized)
    );
    init_header(&rw, MAGIC, VERSION + 1, KIND).unwrap();
    assert_eq!(
        check_header(&rw, MAGIC, VERSION, None),
        Err(HeaderError::VersionMismatch {
            expected: VERSION,
            found: VERSION + 1
        })
    );
    init_header(&rw, MAGIC, VERSION, KIND).unwrap();
    assert_eq!(
        check_header(&rw, MAGIC, VERSION, Some(KIND + 1)),
        Err(HeaderError::KindMismatch {
            expected: KIND + 1,
            found: KIND
        })
    );
    rw.atomic_u64(SegmentHeader::SEGMENT_LEN_OFFSET)
        .unwrap()
        .store(1 << 40, Ordering::Relaxed);
    assert_eq!(
        check_header(&rw, MAGIC, VERSION, Some(KIND)),
        Err(HeaderError::LengthMismatch {
            header: 1 << 40,
            actual: 4096
        })
    );
    let small = Segment::create("h", 64).unwrap();
    let small = small.map(Access::ReadOnly).unwrap();
    assert_eq!(
        check_header(&small, MAGIC, VERSION, None),
        Err(HeaderError::TooSmall { len: 64 })
    );
}

// ---- open ----------------------------------------------------------------

#[test]
fn open_ok() {
    let (_seg, fd) = sealed_segment(LEN, SEALED);
    let (seg, map) = Segment::open(fd, &expect().kind(KIND)).unwrap();
    assert_eq!(seg.len(), LEN);
    assert_eq!(map.len(), LEN);
    assert_eq!(map.access(), Access::ReadOnly);
    assert_eq!(map.load_u64(0, Ordering::Relaxed), Ok(MAGIC));

    // at_least accepts a bigger segment and takes fstat's length.
    let (_seg, fd) = sealed_segment(3 * 4096, SEALED);
    let (seg, _map) = Segment::open(fd, &OpenExpect::at_least(MAGIC, VERSION, 4096)).unwrap();
    assert_eq!(seg.len(), 3 * 4096);
}

#[test]
fn open_not_a_regular_file() {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    assert!(matches!(
        Segment::open(r, &expect()),
        Err(OpenError::NotARegularFile)
    ));
    let null =
        rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    assert!(matches!(
        Segment::open(null, &expect()),
        Err(OpenError::NotARegularFile)
    ));
    let dir = rustix::fs::open(
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    assert!(matches!(
        Segment::open(dir, &expect()),
        Err(OpenError::NotARegularFile)
    ));
}

#[test]
fn open_size_mismatch() {
    let (_seg, fd) = sealed_segment(LEN + 4096, SEALED);
    assert!(matches!(
        Segment::open(fd, &expect()),
        Err(OpenError::SizeMismatch { expected: LEN, actual }) if actual == (LEN + 4096) as u64
    ));
}

#[test]
fn open_too_small() {
    let (_seg, fd) = sealed_segment(4096, SEALED);
    assert!(matches!(
        Segment::open(fd, &OpenExpect::at_least(MAGIC, VERSION, 8192)),
        Err(OpenError::TooSmall {
            min: 8192,
            actual: 4096
        })
    ));
    // Smaller than a header, even when that is the exact size expected.
    let seg = Segment::create("tiny", 64).unwrap();
    seg.add_seals(SEALED).unwrap();
    let fd = seg.read_only_fd().unwrap();
    assert!(matches!(
        Segment::open(fd, &OpenExpect::exact(MAGIC, VERSION, 64)),
        Err(OpenError::TooSmall {
            min: HEADER_SIZE,
            actual: 64
        })
    ));
}

#[test]
fn open_get_seals_unsupported() {
    // A regular file on a disk filesystem (this test binary) has no seals.
    let exe = std::env::current_exe().unwrap();
    let fd = rustix::fs::open(&exe, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
    match Segment::open(fd, &OpenExpect::exact(MAGIC, VERSION, len)) {
        Err(OpenError::GetSeals(e)) => assert_eq!(errno_of(&e), Some(Errno::INVAL)),
        Err(OpenError::MissingSeals { .. }) => {} // tmpfs-backed target dir
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_missing_seals() {
    let (_seg, fd) = sealed_segment(LEN, Seals::SHRINK | Seals::GROW);
    match Segment::open(fd, &expect()) {
        Err(OpenError::MissingSeals { required, actual }) => {
            assert_eq!(required, SEALED);
            assert_eq!(actual, Seals::SHRINK | Seals::GROW);
        }
        other => panic!("{other:?}"),
    }
    // SHRINK is required even when the caller asks for nothing.
    let seg = Segment::create("noshrink", LEN).unwrap();
    let mut e = expect();
    e.seals = Seals::EMPTY;
    match Segment::open(seg.read_only_fd().unwrap(), &e) {
        Err(OpenError::MissingSeals { required, .. }) => assert_eq!(required, Seals::SHRINK),
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_map_write_denied() {
    let (_seg, fd) = sealed_segment(LEN, SEALED);
    match Segment::open(fd, &expect().access(Access::ReadWrite)) {
        Err(OpenError::Map(MapError::WriteDenied(e))) => {
            // The fd is read-only: EACCES comes before the seal check.
            assert_eq!(errno_of(&e), Some(Errno::ACCESS));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_header_errors() {
    let (_seg, fd) = sealed_segment(LEN, SEALED);
    assert!(matches!(
        Segment::open(fd, &OpenExpect::exact(!MAGIC, VERSION, LEN)),
        Err(OpenError::BadMagic { found: MAGIC })
    ));
    let (_seg, fd) = sealed_segment(LEN, SEALED);
    assert!(matches!(
        Segment::open(fd, &OpenExpect::exact(MAGIC, VERSION + 1, LEN)),
        Err(OpenError::VersionMismatch { expected, found: VERSION }) if expected == VERSION + 1
    ));
    let (_seg, fd) = sealed_segment(LEN, SEALED);
    assert!(matches!(
        Segment::open(fd, &expect().kind(KIND + 1)),
        Err(OpenError::KindMismatch { found: KIND, .. })
    ));
}

#[test]
fn open_not_initialized() {
    let seg = Segment::create("v0", LEN).unwrap();
    {
        let rw = seg.map(Access::ReadWrite).unwrap();
        rw.atomic_u64(0).unwrap().store(MAGIC, Ordering::Relaxed);
    }
    seg.add_seals(SEALED).unwrap();
    assert!(matches!(
        Segment::open(seg.read_only_fd().unwrap(), &expect()),
        Err(OpenError::NotInitialized)
    ));
}

#[test]
fn open_header_length_mismatch() {
    let seg = Segment::create("len", LEN).unwrap();
    {
        let rw = seg.map(Access::ReadWrite).unwrap();
        init_header(&rw, MAGIC, VERSION, KIND).unwrap();
        rw.atomic_u64(SegmentHeader::SEGMENT_LEN_OFFSET)
            .unwrap()
            .store(LEN as u64 * 2, Ordering::Relaxed);
    }
    seg.add_seals(SEALED).unwrap();
    assert!(matches!(
        Segment::open(seg.read_only_fd().unwrap(), &expect()),
        Err(OpenError::HeaderLengthMismatch { header, actual })
            if header == LEN as u64 * 2 && actual == LEN as u64
    ));
}

#[test]
fn errors_display() {
    let e = OpenError::MissingSeals {
        required: SEALED,
        actual: Seals::SHRINK,
    };
    assert!(e.to_string().contains("FUTURE_WRITE"));
    let e: Box<dyn std::error::Error> = Box::new(CreateError::ZeroLength);
    assert!(!e.to_string().is_empty());
}
