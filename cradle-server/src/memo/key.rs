//! Memo keys and memo entries, as bytes.
//!
//! * **Key**: BLAKE3 over a domain tag, the protocol and format versions,
//!   the method's `name@version`, and the request's *canonical* bytes (the
//!   server decodes the request and encodes it again, so a peer's padding
//!   or layout choices cannot leak in) in which every blob handle the
//!   request lists is replaced by the blob's digest and length, followed by
//!   the positions replaced (so raw bytes that happen to equal a digest can
//!   never collide with a handle).
//! * **Entry**: the value stored under the key: a header, the result
//!   blobs (where each handle sits in the response, its length and digest),
//!   then the response bytes as the handler's run encoded them.

use ipc_rpc::blob::BlobHandle;
use ipc_rpc::memo::{Digest, MEMO_PREFIX};

/// `EntryHeader::magic`.
const ENTRY_MAGIC: u64 = u64::from_le_bytes(*b"CRDLMEMO");
/// Layout version of memo entries.
const ENTRY_VERSION: u32 = 1;
/// Bytes of the fixed header.
const HEADER: usize = 32;
/// Bytes per result.
const RESULT: usize = 48;
/// Bytes of an archived [`BlobHandle`] (five little-endian words).
pub(crate) const HANDLE_BYTES: usize = 40;

/// A memo key: its digest and its cache key.
#[derive(Debug, Clone)]
pub(crate) struct MemoKey {
    pub(crate) digest: Digest,
    /// `cradle.memo/<name>@<version>/<hex>`.
    /// (Shared: a remembered key is cloned on every hit.)
    pub(crate) name: std::sync::Arc<str>,
}

impl MemoKey {
    /// The cache key of result blob `i`.
    pub(crate) fn result(&self, i: usize) -> String {
        format!("{}/{i}", self.name)
    }
}

/// The cache-key prefix of one method's entries.
pub(crate) fn method_prefix(label: &str) -> String {
    format!("{MEMO_PREFIX}{label}/")
}

/// The 8-aligned positions where `h`'s archived bytes sit in `bytes`.
fn positions(bytes: &[u8], h: &BlobHandle) -> Vec<usize> {
    let image: &[u8] = bytemuck::bytes_of(h);
    (0..bytes.len().saturating_sub(HANDLE_BYTES - 1))
        .step_by(8)
        .filter(|&at| &bytes[at..at + HANDLE_BYTES] == image)
        .collect()
}

/// The key of a request of method `label` whose canonical encoding is
/// `canonical` and which passes the blobs `args` (each with its digest).
/// Fails if a listed handle does not appear in the request.
pub(crate) fn memo_key(
    label: &str,
    canonical: &[u8],
    args: &[(BlobHandle, Digest)],
) -> Result<MemoKey, String> {
    let mut owned;
    let mut bytes: &[u8] = canonical;
    let mut replaced = Vec::new();
    if !args.is_empty() {
        owned = canonical.to_vec();
        replace(&mut owned, label, args, &mut replaced)?;
        bytes = &owned;
    }
    let mut k = blake3::Hasher::new();
    k.update(b"cradle.memo.key\0");
    k.update(&ipc_rpc::handshake::PROTOCOL_VERSION.to_le_bytes());
    k.update(&ipc_rpc::handshake::FORMAT.to_le_bytes());
    k.update(&(label.len() as u64).to_le_bytes());
    k.update(label.as_bytes());
    k.update(&(bytes.len() as u64).to_le_bytes());
    k.update(bytes);
    k.update(&(replaced.len() as u64).to_le_bytes());
    for (p, _) in &replaced {
        k.update(&(*p as u64).to_le_bytes());
    }
    let digest = *k.finalize().as_bytes();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = method_prefix(label);
    name.reserve(64);
    for b in digest {
        name.push(HEX[usize::from(b >> 4)] as char);
        name.push(HEX[usize::from(b & 15)] as char);
    }
    Ok(MemoKey {
        digest,
        name: name.into(),
    })
}

/// Replaces each listed handle's bytes in `bytes` by its digest and
/// length; records the positions.
fn replace(
    bytes: &mut [u8],
    label: &str,
    args: &[(BlobHandle, Digest)],
    replaced: &mut Vec<(usize, u64)>,
) -> Result<(), String> {
    for (h, d) in args {
        let at = positions(bytes, h);
        if at.is_empty() && !replaced.iter().any(|(_, id)| *id == h.id) {
            return Err(format!(
                "{label}: the request lists blob {} but does not contain its handle",
                h.id
            ));
        }
        for p in at {
            bytes[p..p + 32].copy_from_slice(d);
            bytes[p + 32..p + HANDLE_BYTES].copy_from_slice(&h.len.to_le_bytes());
            replaced.push((p, h.id));
        }
    }
    replaced.sort_unstable();
    Ok(())
}

/// One result blob of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResultSlot {
    /// Where its handle sits in the response.
    pub(crate) offset: usize,
    /// Its length.
    pub(crate) len: u64,
    /// Its digest.
    pub(crate) digest: Digest,
}

/// A decoded entry.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub(crate) run_ns: u64,
    pub(crate) results: Vec<ResultSlot>,
    pub(crate) response: &'a [u8],
}

/// Where each result handle sits in `response` (its first place), or an
/// error naming the first one missing.
pub(crate) fn result_offsets(
    response: &[u8],
    results: &[BlobHandle],
) -> Result<Vec<usize>, String> {
    results
        .iter()
        .map(|h| {
            positions(response, h)
                .first()
                .copied()
                .ok_or_else(|| format!("the response does not contain result blob {}", h.id))
        })
        .collect()
}

/// The bytes of an entry.
pub(crate) fn encode_entry(run_ns: u64, results: &[ResultSlot], response: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + RESULT * results.len() + response.len());
    v.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
    v.extend_from_slice(&ENTRY_VERSION.to_le_bytes());
    v.extend_from_slice(&(results.len() as u32).to_le_bytes());
    v.extend_from_slice(&run_ns.to_le_bytes());
    v.extend_from_slice(&(response.len() as u64).to_le_bytes());
    for r in results {
        v.extend_from_slice(&(r.offset as u64).to_le_bytes());
        v.extend_from_slice(&r.len.to_le_bytes());
        v.extend_from_slice(&r.digest);
    }
    v.extend_from_slice(response);
    v
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decodes an entry, checking every length and offset.
pub(crate) fn decode_entry(b: &[u8]) -> Result<Entry<'_>, String> {
    if b.len() < HEADER {
        return Err(format!("{} bytes: shorter than the header", b.len()));
    }
    if u64_at(b, 0) != ENTRY_MAGIC {
        return Err("bad magic".into());
    }
    let version = u64_at(b, 8) as u32;
    if version != ENTRY_VERSION {
        return Err(format!("layout version {version}"));
    }
    let n = (u64_at(b, 8) >> 32) as usize;
    let run_ns = u64_at(b, 16);
    let resp_len = u64_at(b, 24);
    let start = n
        .checked_mul(RESULT)
        .and_then(|r| r.checked_add(HEADER))
        .filter(|&s| s <= b.len())
        .ok_or("result table past the end")?;
    if resp_len != (b.len() - start) as u64 {
        return Err("response length does not match".into());
    }
    let response = &b[start..];
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let at = HEADER + i * RESULT;
        let offset = u64_at(b, at) as usize;
        if !offset.is_multiple_of(8) || offset.saturating_add(HANDLE_BYTES) > response.len() {
            return Err(format!(
                "result {i} at offset {offset} is outside the response"
            ));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[at + 16..at + 48]);
        results.push(ResultSlot {
            offset,
            len: u64_at(b, at + 8),
            digest,
        });
    }
    Ok(Entry {
        run_ns,
        results,
        response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(id: u64, len: u64) -> BlobHandle {
        BlobHandle {
            epoch: 0xabcd_ef01_2345_6789,
            id,
            segment: 3,
            offset: 4096,
            len,
        }
    }

    fn canonical(v: &(u64, BlobHandle)) -> Vec<u8> {
        let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
        ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn equal_contents_give_one_key_other_contents_another() {
        let (a, b) = (h(1, 10), h(2, 10));
        let d = [7u8; 32];
        let ka = memo_key("m@1", &canonical(&(5, a)), &[(a, d)]).unwrap();
        let kb = memo_key("m@1", &canonical(&(5, b)), &[(b, d)]).unwrap();
        assert_eq!(ka.digest, kb.digest, "two blobs, same bytes: one key");
        let kc = memo_key("m@1", &canonical(&(5, b)), &[(b, [8u8; 32])]).unwrap();
        assert_ne!(ka.digest, kc.digest, "other bytes: another key");
        let kd = memo_key("m@2", &canonical(&(5, a)), &[(a, d)]).unwrap();
        assert_ne!(ka.digest, kd.digest, "another version: another key");
        let ke = memo_key("m@1", &canonical(&(6, a)), &[(a, d)]).unwrap();
        assert_ne!(ka.digest, ke.digest, "another argument: another key");
        assert!(ka.name.starts_with("cradle.memo/m@1/"));
        assert_eq!(ka.name.len(), "cradle.memo/m@1/".len() + 64);
    }

    #[test]
    fn a_listed_handle_missing_from_the_request_is_refused() {
        let a = h(1, 10);
        assert!(memo_key("m@1", &canonical(&(5, a)), &[(h(9, 1), [0; 32])]).is_err());
    }

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let resp = vec![0u8; 96];
        let slots = [ResultSlot {
            offset: 48,
            len: 5,
            digest: [3; 32],
        }];
        let bytes = encode_entry(1234, &slots, &resp);
        let e = decode_entry(&bytes).unwrap();
        assert_eq!(
            (e.run_ns, e.results.as_slice(), e.response),
            (1234, &slots[..], &resp[..])
        );
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(decode_entry(&bad).is_err());
        let mut far = bytes;
        far[32..40].copy_from_slice(&4096u64.to_le_bytes());
        assert!(decode_entry(&far).is_err());
    }
}
