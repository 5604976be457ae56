//! The entry file format: a fixed header, the key, zero padding, the data.
//!
//! ```text
//!  offset  size      field
//!  ------  --------  --------------------------------------------------
//!       0         8  MAGIC = b"CRADLEDC"
//!       8         4  VERSION (u32 LE) = 1
//!      12         4  key_len (u32 LE), 0 ..= MAX_KEY_LEN
//!      16         8  data_len (u64 LE)
//!      24         8  data_hash (u64 LE) = xxh3-64(data)
//!      32         8  head_hash (u64 LE) = xxh3-64(bytes 0..32 ++ key)
//!      40   key_len  key (UTF-8)
//!       …         …  zero padding up to data_off = round_up(40 + key_len, 64)
//! data_off  data_len data
//!
//! file length = data_off + data_len, exactly
//! ```
//!
//! The padding is not covered by a checksum: nothing reads it.

use core::fmt;
use std::io;
use xxhash_rust::xxh3::Xxh3Default;

/// First eight bytes of every entry file.
pub(crate) const MAGIC: [u8; 8] = *b"CRADLEDC";

/// Format version; a file with another version is treated as damaged (the
/// cache is rebuilt, nothing is migrated).
pub(crate) const VERSION: u32 = 1;

/// Length of the fixed part of the header, before the key.
pub(crate) const HEADER_LEN: usize = 40;

/// The data starts at a multiple of this offset in the file.
pub(crate) const DATA_ALIGN: u64 = 64;

/// Longest key accepted, in bytes (bounds what the scan at open reads).
pub(crate) const MAX_KEY_LEN: usize = 4096;

/// Byte range of the fields covered by `head_hash` (before the key).
const HASHED_FIELDS: usize = 32;

/// The decoded fixed header of an entry file (after its checks passed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Length of the key in bytes, `<= MAX_KEY_LEN`.
    pub(crate) key_len: usize,
    /// Length of the data in bytes.
    pub(crate) data_len: u64,
    /// xxh3-64 of the data.
    pub(crate) data_hash: u64,
}

impl Header {
    /// Offset of the data in the file.
    pub(crate) fn data_offset(&self) -> u64 {
        data_offset(self.key_len)
    }

    /// The exact length the file must have, or `None` if it overflows `u64`
    /// (only a forged header can say so).
    pub(crate) fn file_len(&self) -> Option<u64> {
        self.data_offset().checked_add(self.data_len)
    }
}

/// Offset of the data in a file whose key has `key_len` bytes.
pub(crate) fn data_offset(key_len: usize) -> u64 {
    (HEADER_LEN as u64 + key_len as u64).next_multiple_of(DATA_ALIGN)
}

/// The file length of an entry (what counts against the budget), or `None`
/// on overflow.
pub(crate) fn file_len(key_len: usize, data_len: u64) -> Option<u64> {
    data_offset(key_len).checked_add(data_len)
}

/// Writes the header, the key and the zero padding into `out` (cleared
/// first); the data goes at `out.len()` afterwards.
///
/// The caller checked `key.len() <= MAX_KEY_LEN`.
pub(crate) fn encode_head(key: &[u8], data_len: u64, data_hash: u64, out: &mut Vec<u8>) {
    debug_assert!(key.len() <= MAX_KEY_LEN);
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    // Cannot truncate: MAX_KEY_LEN fits in u32.
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&data_hash.to_le_bytes());
    let head_hash = head_hash(&out[..HASHED_FIELDS], key);
    out.extend_from_slice(&head_hash.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(key);
    // data_offset(MAX_KEY_LEN) is a few KiB: fits usize everywhere.
    out.resize(data_offset(key.len()) as usize, 0);
}

/// Decodes and checks the header at the start of `buf`, which holds the
/// first bytes of a file (at least the header and the key; more is fine).
/// Returns the header and the key bytes.
pub(crate) fn decode_head(buf: &[u8]) -> Result<(Header, &[u8]), Damage> {
    let fixed = buf.get(..HEADER_LEN).ok_or(Damage::TooShort {
        len: buf.len() as u64,
    })?;
    if fixed[..8] != MAGIC {
        return Err(Damage::BadMagic);
    }
    let version = u32_at(fixed, 8);
    if version != VERSION {
        return Err(Damage::BadVersion(version));
    }
    let key_len = u32_at(fixed, 12) as usize;
    if key_len > MAX_KEY_LEN {
        return Err(Damage::KeyTooLong(key_len));
    }
    let key = buf
        .get(HEADER_LEN..HEADER_LEN + key_len)
        .ok_or(Damage::TooShort {
            len: buf.len() as u64,
        })?;
    if head_hash(&fixed[..HASHED_FIELDS], key) != u64_at(fixed, 32) {
        return Err(Damage::HeaderChecksum);
    }
    let header = Header {
        key_len,
        data_len: u64_at(fixed, 16),
        data_hash: u64_at(fixed, 24),
    };
    Ok((header, key))
}

/// xxh3-64 over the hashed header fields followed by the key.
fn head_hash(fields: &[u8], key: &[u8]) -> u64 {
    let mut h = Xxh3Default::new();
    h.update(fields);
    h.update(key);
    h.digest()
}

/// The little-endian `u32` at `at` in `fixed` (a `HEADER_LEN` slice).
fn u32_at(fixed: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&fixed[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The little-endian `u64` at `at` in `fixed` (a `HEADER_LEN` slice).
fn u64_at(fixed: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&fixed[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Why an entry file cannot be served. Every case makes the entry a miss;
/// the file is deleted and counted in `corruptions`.
#[derive(Debug)]
pub(crate) enum Damage {
    /// The file name is not 32 lowercase hex digits.
    BadName,
    /// The file is shorter than its header says.
    TooShort {
        /// The bytes available.
        len: u64,
    },
    /// The file does not start with [`MAGIC`].
    BadMagic,
    /// Another format version.
    BadVersion(u32),
    /// The header claims a key longer than [`MAX_KEY_LEN`].
    KeyTooLong(usize),
    /// The header checksum does not match the header fields and the key.
    HeaderChecksum,
    /// The key is not UTF-8 (keys are `&str`).
    KeyNotUtf8,
    /// The file name is not the hash of the key in the file.
    NameMismatch,
    /// The file holds another key than the one asked for.
    KeyMismatch,
    /// The file length differs from the length the header implies.
    Length {
        /// `data_off + data_len` from the header (`None`: overflows).
        expected: Option<u64>,
        /// The file's length.
        actual: u64,
    },
    /// Reading the file failed (including a short read: it shrank).
    Read(io::Error),
    /// The data checksum does not match.
    DataChecksum,
    /// The file disappeared (deleted behind the tier's back).
    Vanished,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadName => f.write_str("the file name is not an entry name"),
            Self::TooShort { len } => write!(f, "the file is too short ({len} bytes)"),
            Self::BadMagic => f.write_str("bad magic (not an entry file)"),
            Self::BadVersion(v) => write!(f, "format version {v}, expected {VERSION}"),
            Self::KeyTooLong(n) => write!(f, "the header claims a {n}-byte key"),
            Self::HeaderChecksum => f.write_str("header checksum mismatch"),
            Self::KeyNotUtf8 => f.write_str("the key is not UTF-8"),
            Self::NameMismatch => f.write_str("the file name is not the hash of its key"),
            Self::KeyMismatch => f.write_str("the file holds another key"),
            Self::Length {
                expected: Some(e),
                actual,
            } => write!(f, "the file has {actual} bytes, its header says {e}"),
            Self::Length {
                expected: None,
                actual,
            } => write!(
                f,
                "the file has {actual} bytes, its header length overflows"
            ),
            Self::Read(e) => write!(f, "read failed: {e}"),
            Self::DataChecksum => f.write_str("data checksum mismatch"),
            Self::Vanished => f.write_str("the file is gone"),
        }
    }
}
