//! A sealed blob is immutable by every route, for its readers and for its
//! author: each attack runs in a real child process against the real
//! server's descriptors and must fail (writing through the mapping must kill
//! the child with SIGSEGV). Forged and stale handles are in `e2e_blobs.rs`.

mod support;

use cradle_client::{BlobHandle, Client};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use support::*;

const SMALL: usize = 10_000;
const LARGE: usize = 3 << 20;

fn fill(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Every write route against `fd` (a blob's segment) and the mapping at
/// `addr`; one line per route, "ok <route> <errno>" if it failed as it must,
/// "BROKEN <route>" if it succeeded.
fn attack(fd: BorrowedFd<'_>, addr: *const u8) -> Vec<String> {
    let mut out = Vec::new();
    let mut report = |route: &str, failed: bool| {
        out.push(if failed {
            format!("ok {route} {}", errno())
        } else {
            format!("BROKEN {route}")
        });
    };
    let path = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
    // SAFETY: a NUL-terminated path; open has no other memory arguments.
    let rw = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
    // Reopening read-write may work (memfds are 0777); what it gives must
    // be useless for writing.
    let fds: Vec<(i32, &str)> = if rw >= 0 {
        vec![(fd.as_raw_fd(), "orig"), (rw, "reopened")]
    } else {
        vec![(fd.as_raw_fd(), "orig")]
    };
    for (f, which) in fds {
        // SAFETY: a fresh mapping request (null hint); unmapped below if the
        // kernel grants it, which is the failure being checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f,
                0,
            )
        };
        report(&format!("mmap-shared-write-{which}"), p == libc::MAP_FAILED);
        if p != libc::MAP_FAILED {
            // SAFETY: the mapping just made, 4096 bytes.
            unsafe { libc::munmap(p, 4096) };
        }
        let byte = [0xAAu8];
        // SAFETY: a 1-byte buffer that lives across the call.
        let n = unsafe { libc::pwrite(f, byte.as_ptr().cast(), 1, 4096) };
        report(&format!("pwrite-{which}"), n < 0);
        // SAFETY: as above.
        let n = unsafe { libc::write(f, byte.as_ptr().cast(), 1) };
        report(&format!("write-{which}"), n < 0);
        // SAFETY: no memory arguments.
        report(
            &format!("ftruncate-{which}"),
            unsafe { libc::ftruncate(f, 0) } < 0,
        );
        // SAFETY: no memory arguments.
        report(
            &format!("fallocate-punch-{which}"),
            unsafe {
                libc::fallocate(
                    f,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    4096,
                    4096,
                )
            } < 0,
        );
        // SAFETY: no memory arguments.
        report(
            &format!("add-seals-{which}"),
            unsafe { libc::fcntl(f, libc::F_ADD_SEALS, libc::F_SEAL_WRITE) } < 0,
        );
    }
    let page = (addr as usize) & !4095;
    // SAFETY: `page` is inside our read-only mapping of the blob; on the
    // (wrong) success the protection is restored at once.
    let r = unsafe { libc::mprotect(page as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE) };
    report("mprotect-write", r < 0);
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::mprotect(page as *mut _, 4096, libc::PROT_READ) };
    }
    if rw >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(rw) };
    }
    out
}

fn parse_handle(s: &str) -> BlobHandle {
    let v: Vec<u64> = s.split(',').map(|x| x.parse().unwrap()).collect();
    BlobHandle {
        epoch: v[0],
        id: v[1],
        segment: v[2],
        offset: v[3],
        len: v[4],
    }
}

fn show_handle(h: &BlobHandle) -> String {
    format!("{},{},{},{},{}", h.epoch, h.id, h.segment, h.offset, h.len)
}

#[test]
#[ignore = "entry point of the child processes the other tests spawn"]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    let c = Client::connect(cradle_client::default_socket_path()).expect("connect");
    match role.as_str() {
        // Maps the blob as a reader and attacks it.
        "reader" => {
            let r = c.get(&parse_handle(&args[0])).expect("get");
            for line in attack(r.segment_fd(), r.as_ptr()) {
                println!("RESULT {line}");
            }
        }
        // Writes through its read-only mapping: must die of SIGSEGV.
        "scribbler" => {
            let r = c.get(&parse_handle(&args[0])).expect("get");
            println!("RESULT mapped");
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            // SAFETY: deliberately wrong: the mapping is read-only, so the
            // store faults; nothing else runs after it.
            unsafe { (r.as_ptr() as *mut u8).write_volatile(0x55) };
            println!("RESULT BROKEN wrote through a read-only mapping");
        }
        // Authors a large blob, keeps a duplicate of its read-write
        // descriptor across the seal, then attacks with it.
        "author" => {
            let data = fill(LARGE, 3);
            let mut w = c.create(LARGE).expect("create");
            assert!(w.is_large());
            w.write_at(0, &data);
            let kept = w
                .large_fd()
                .expect("large")
                .try_clone_to_owned()
                .expect("dup");
            let blob = c
                .create(1)
                .and_then(|mut one| {
                    one.write_at(0, &[1]);
                    one.seal()
                })
                .expect("a small blob meanwhile");
            drop(blob);
            let blob = w.seal().expect("seal");
            let r = c.get(blob.handle()).expect("get own blob");
            use std::os::fd::AsFd;
            for line in attack(kept.as_fd(), r.as_ptr()) {
                println!("RESULT {line}");
            }
            println!("RESULT handle {}", show_handle(blob.handle()));
            c.cache().put("authored", &blob).expect("put");
        }
        other => panic!("unknown role {other}"),
    }
}

fn check_attacks(lines: &[String], what: &str) {
    let attacks: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("ok ") || l.starts_with("BROKEN"))
        .collect();
    assert!(attacks.len() >= 7, "{what}: too few attacks ran: {lines:?}");
    for l in &attacks {
        assert!(l.starts_with("ok "), "{what}: {l}");
    }
    eprintln!(
        "{what}: {} write routes refused: {attacks:?}",
        attacks.len()
    );
}

#[test]
fn readers_and_the_author_cannot_change_a_sealed_blob() {
    let (_dog, dir, _server) = with_server("blob seals", Duration::from_secs(120), &[]);
    let c = Client::connect(dir.socket()).unwrap();
    for (len, seed) in [(SMALL, 1u8), (LARGE, 2)] {
        let data = fill(len, seed);
        let mut w = c.create(len).unwrap();
        assert_eq!(w.is_large(), len > cradle_client::SMALL_BLOB_MAX);
        w.write_at(0, &data);
        let blob = w.seal().unwrap();
        let h = show_handle(blob.handle());
        let kind = if len == SMALL { "pool" } else { "large" };

        let (status, lines) = child_results(spawn_child(
            "reader",
            &dir.socket(),
            std::slice::from_ref(&h),
        ));
        assert!(status.success(), "reader of a {kind} blob: {status}");
        check_attacks(&lines, &format!("reader of a {kind} blob"));

        let (status, lines) = child_results(spawn_child("scribbler", &dir.socket(), &[h]));
        assert_eq!(
            status.signal(),
            Some(libc::SIGSEGV),
            "scribbler on a {kind} blob: {status}, {lines:?}"
        );
        assert_eq!(lines, ["mapped"]);

        let r = c.get(blob.handle()).unwrap();
        assert_eq!(&r[..], &data[..], "{kind} blob changed");
    }

    // The author, after seal, with the read-write descriptor it kept.
    let (status, lines) = child_results(spawn_child("author", &dir.socket(), &[]));
    assert!(status.success(), "author: {status}");
    check_attacks(&lines, "author of a large blob after seal");
    let h = lines
        .iter()
        .find_map(|l| l.strip_prefix("handle "))
        .map(parse_handle)
        .expect("author handle");
    let r = c
        .cache()
        .get("authored")
        .unwrap()
        .expect("cached by the author");
    assert_eq!(r.handle(), &h);
    assert_eq!(&r[..], &fill(LARGE, 3)[..]);
}

#[test]
fn the_author_reusing_its_pool_does_not_touch_sealed_small_blobs() {
    let (_dog, dir, _server) = with_server("blob pool reuse", Duration::from_secs(60), &[]);
    let c = Client::connect(dir.socket()).unwrap();
    let first = {
        let mut w = c.create(4096).unwrap();
        w.write_at(0, &[1; 4096]);
        w.seal().unwrap()
    };
    // The author pool range is free again: the next blobs reuse it.
    for i in 0..10u8 {
        let mut w = c.create(4096).unwrap();
        w.write_at(0, &[i + 2; 4096]);
        drop(w); // abandoned, and the range rewritten each time
    }
    assert_eq!(&c.get(first.handle()).unwrap()[..], &[1; 4096][..]);
}
