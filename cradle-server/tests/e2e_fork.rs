//! A forked child that uses its parent's client gets `CallError::Forked`, and
//! the parent's session is untouched.

mod support;

use cradle_client::{CallError, Client};
use ipc_rpc::builtin::Ping;
use std::time::Duration;
use support::*;

#[test]
fn a_forked_child_cannot_use_the_parents_client() {
    let (_dog, dir, _server) = with_server("fork", Duration::from_secs(60), &[]);
    let client = Client::connect(dir.socket()).unwrap();
    assert_eq!(client.call::<Ping>(&b"before".to_vec()).unwrap(), b"before");
    let req = b"child".to_vec();
    // SAFETY: the child only calls `Client::call`, whose fork check fails before
    // it takes a lock or allocates (the error is a unit variant), then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match client.call::<Ping>(&req) {
            Err(CallError::Forked) => 0,
            Ok(_) => 1,
            Err(_) => 2,
        };
        // SAFETY: terminates the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child we just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "child did not exit normally: {status:#x}"
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child: 1 = the call went through, 2 = another error"
    );
    // The parent's client is unaffected.
    assert_eq!(client.call::<Ping>(&b"after".to_vec()).unwrap(), b"after");
}
