//! Blobs through a provided method, measured: a caller passes a 256 MiB
//! blob to a provider process, which reads it in place and answers with a
//! 256 MiB result blob of its own. Each side maps the other's memfd (same
//! device and inode), and the system's `Shmem` grows by the two blobs, not
//! by a copy of either. Alone in its test binary so that no other test's
//! memory moves `Shmem` meanwhile.

mod support;

use cradle_client::{Call, Client, HandlerError};
use std::os::fd::AsFd;
use std::time::Duration;
use support::*;

const LEN: usize = 256 << 20;
const MIB: i64 = 1 << 20;

ipc_rpc::method! {
    /// Checks the blob passed with the call against the test pattern and
    /// answers (bad words, the argument's identity, the result's
    /// identity); passes back a blob of the pattern's complement.
    pub Mirror = "test.mirror" version 1: () => (u64, String, String);
}

fn fill(w: &mut cradle_client::BlobWriter, flip: u64) {
    let mut chunk = vec![0u8; 1 << 20];
    for (ci, at) in (0..LEN).step_by(chunk.len()).enumerate() {
        for (k, b) in chunk.chunks_exact_mut(8).enumerate() {
            let i = (ci * (1 << 17) + k) as u64;
            b.copy_from_slice(&(word(i) ^ flip).to_le_bytes());
        }
        w.write_at(at, &chunk);
    }
}

fn bad_words(b: &[u8], flip: u64) -> u64 {
    b.chunks_exact(8)
        .enumerate()
        .filter(|(i, b)| u64::from_le_bytes((*b).try_into().unwrap()) != word(*i as u64) ^ flip)
        .count() as u64
}

fn mirror(call: &mut Call<'_>, (): ()) -> Result<(u64, String, String), HandlerError> {
    let arg = call.blobs().first().ok_or("pass a blob")?;
    let bad = bad_words(arg, 0);
    let arg_id = identity(arg.segment_fd());
    let mut w = call.client().create(LEN)?;
    let res_id = identity(w.large_fd().ok_or("a large blob")?);
    fill(&mut w, !0);
    let blob = w.seal()?;
    call.attach(blob);
    Ok((bad, arg_id, res_id))
}

#[test]
#[ignore = "entry point of the child processes the test spawns"]
fn child_entry() {
    let Some((role, _)) = child_role() else {
        return;
    };
    assert_eq!(role, "provider");
    let c =
        Client::connect_with(cradle_client::default_socket_path(), sleeping()).expect("connect");
    let r = c.provider().serve::<Mirror>(mirror).run();
    println!("RESULT ended {r:?}");
}

#[test]
fn a_256_mib_argument_and_a_256_mib_result_pass_without_a_copy() {
    let (dog, dir, _server) = with_server("provided blobs", Duration::from_secs(300), &[]);
    let socket = dir.socket();
    let mut provider = spawn_child("provider", &socket, &[]);
    dog.watch_child(provider.id());
    let c = Client::connect_with(&socket, sleeping()).unwrap();
    let ready = eventually(Duration::from_secs(30), || {
        c.methods()
            .map(|l| l.iter().any(|m| m.name == "test.mirror"))
            .unwrap_or(false)
    });
    assert!(ready, "the provider never registered");
    let before = shmem();
    let mut w = c.create(LEN).unwrap();
    let arg_id = identity(w.large_fd().unwrap());
    fill(&mut w, 0);
    let blob = w.seal().unwrap();
    let ((bad, seen_arg, res_id), results) =
        c.call_with_blobs::<Mirror>(&(), &[blob.handle()]).unwrap();
    assert_eq!(bad, 0, "the provider read every byte right");
    assert_eq!(seen_arg, arg_id, "the provider maps the caller's own memfd");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r.len(), LEN);
    assert_eq!(identity(r.segment_fd().as_fd()), res_id, "and we map its");
    assert_eq!(bad_words(r, !0), 0);
    let grown = shmem() - before;
    eprintln!(
        "Shmem grew {} MiB for a 256 MiB argument and a 256 MiB result",
        grown / MIB
    );
    // Two blobs of 256 MiB; one copy of either would make it 768.
    assert!(grown < 640 * MIB, "Shmem grew {} MiB", grown / MIB);
    drop(results);
    drop(blob);
    provider.kill().ok();
    provider.wait().ok();
}
