//! Zero copy, measured: app A writes and seals a 256 MiB blob and puts it in
//! the cache; app B gets it and checks every byte. Both processes see the
//! same memfd (device and inode), and the system's `Shmem` grows by about
//! 256 MiB, not 512. Alone in its test binary so that no other test's
//! memory moves `Shmem` meanwhile.

mod support;

use cradle_client::Client;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;
use support::*;

const LEN: usize = 256 << 20;
const MIB: i64 = 1 << 20;

#[test]
#[ignore = "entry point of the child processes the test spawns"]
fn child_entry() {
    let Some((role, _)) = child_role() else {
        return;
    };
    let c = Client::connect(cradle_client::default_socket_path()).expect("connect");
    match role.as_str() {
        "writer" => {
            let mut w = c.create(LEN).expect("create");
            assert!(w.is_large());
            let mut chunk = vec![0u8; 1 << 20];
            for (ci, at) in (0..LEN).step_by(chunk.len()).enumerate() {
                for (k, b) in chunk.chunks_exact_mut(8).enumerate() {
                    let i = (ci * (1 << 17) + k) as u64;
                    b.copy_from_slice(&word(i).to_le_bytes());
                }
                w.write_at(at, &chunk);
            }
            println!("RESULT identity {}", identity(w.large_fd().unwrap()));
            let blob = w.seal().expect("seal");
            c.cache().put("big", &blob).expect("put");
            println!("RESULT put");
        }
        "reader" => {
            let r = c.cache().get("big").expect("get").expect("hit");
            assert_eq!(r.len(), LEN);
            let bad = r
                .chunks_exact(8)
                .enumerate()
                .filter(|(i, b)| u64::from_le_bytes((*b).try_into().unwrap()) != word(*i as u64))
                .count();
            println!("RESULT bad_words {bad}");
            println!("RESULT identity {}", identity(r.segment_fd().as_fd()));
            println!("RESULT shmem {}", shmem());
            std::io::stdout().flush().unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_256_mib_blob_reaches_another_process_without_a_copy() {
    let (_dog, dir, _server) = with_server("blob share", Duration::from_secs(300), &[]);
    let before = shmem();
    let (status, w) = child_results(spawn_child("writer", &dir.socket(), &[]));
    assert!(status.success(), "writer: {status} {w:?}");
    let (status, r) = child_results(spawn_child("reader", &dir.socket(), &[]));
    assert!(status.success(), "reader: {status} {r:?}");
    let field = |lines: &[String], k: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{k} ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {k} in {lines:?}"))
    };
    assert_eq!(field(&r, "bad_words"), "0", "every byte checked");
    assert_eq!(
        field(&w, "identity"),
        field(&r, "identity"),
        "the reader maps the writer's own memfd"
    );
    let grown = field(&r, "shmem").parse::<i64>().unwrap() - before;
    eprintln!(
        "Shmem grew by {} MiB for a {} MiB blob written by one process and read by another",
        grown / MIB,
        LEN as i64 / MIB
    );
    assert!(
        (200 * MIB..=384 * MIB).contains(&grown),
        "Shmem grew by {} MiB: expected about 256 (a copy would make it 512)",
        grown / MIB
    );
}
