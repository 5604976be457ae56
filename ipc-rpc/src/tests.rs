//! Crate-wide checks that span several modules.

use crate::{Method, blob, builtin, example, handshake, memo, provide};

/// Every method's wire id, pinned: a change here breaks every deployed
/// peer, so a refactoring of how methods are declared must leave these
/// untouched.
#[test]
fn method_ids_are_pinned() {
    let pinned: [(&str, u64, u64); 25] = [
        (builtin::Ping::NAME, builtin::Ping::ID, 0xe3336a6f228687ed),
        (builtin::Stats::NAME, builtin::Stats::ID, 0x0d65b22086140c67),
        (
            blob::AuthorPool::NAME,
            blob::AuthorPool::ID,
            0x917a8a7e01358cfc,
        ),
        (
            blob::SealSmall::NAME,
            blob::SealSmall::ID,
            0x30fc0d9afc2cb393,
        ),
        (
            blob::CreateLarge::NAME,
            blob::CreateLarge::ID,
            0xf94fb66ca24764d8,
        ),
        (
            blob::SealLarge::NAME,
            blob::SealLarge::ID,
            0x7fdf6e0df558b1b7,
        ),
        (blob::Acquire::NAME, blob::Acquire::ID, 0x9ffa910e3d5763e6),
        (
            blob::MapSegment::NAME,
            blob::MapSegment::ID,
            0x55b8576089016c98,
        ),
        (blob::Release::NAME, blob::Release::ID, 0xe77548ba47e261b1),
        (blob::CachePut::NAME, blob::CachePut::ID, 0x47e9b045de4a318a),
        (
            blob::CachePutDurable::NAME,
            blob::CachePutDurable::ID,
            0x91b7c6fae0f339be,
        ),
        (blob::CacheGet::NAME, blob::CacheGet::ID, 0x71235b48ad264e9e),
        (
            blob::CacheLoad::NAME,
            blob::CacheLoad::ID,
            0x59f7ad870bc6287d,
        ),
        (
            blob::CacheRemove::NAME,
            blob::CacheRemove::ID,
            0xa8d0e2d3a18f3001,
        ),
        (
            example::Invert::NAME,
            example::Invert::ID,
            0x69beec6121d073d9,
        ),
        (
            provide::Register::NAME,
            provide::Register::ID,
            0xa689cd3ee905c0b1,
        ),
        (
            provide::Unregister::NAME,
            provide::Unregister::ID,
            0x02ca5423f5e96978,
        ),
        (
            provide::ListMethods::NAME,
            provide::ListMethods::ID,
            0x448dccf34813e987,
        ),
        (
            memo::BlobDigest::NAME,
            memo::BlobDigest::ID,
            0x1b6698c4e9315cc8,
        ),
        (memo::MemoList::NAME, memo::MemoList::ID, 0xcc5fca1fc90f0691),
        (
            memo::MemoClear::NAME,
            memo::MemoClear::ID,
            0x935d6d8554255cfe,
        ),
        (
            memo::CacheClaim::NAME,
            memo::CacheClaim::ID,
            0x014fdd809e2ea47d,
        ),
        (
            memo::CacheUnclaim::NAME,
            memo::CacheUnclaim::ID,
            0xa030c900e66acd7e,
        ),
        (example::Work::NAME, example::Work::ID, 0xb134c0874cffc632),
        (
            example::WorkRuns::NAME,
            example::WorkRuns::ID,
            0xe0e2e0b010305bf9,
        ),
    ];
    for (name, id, want) in pinned {
        assert_eq!(id, want, "{name}: id {id:#018x}, pinned {want:#018x}");
    }
}

/// The handshake's schema hash covers the builtin methods' ids; pinned for
/// the same reason.
#[test]
fn schema_hash_is_pinned() {
    assert_eq!(handshake::SCHEMA_HASH, 0xb9a8196e70014f58);
}
