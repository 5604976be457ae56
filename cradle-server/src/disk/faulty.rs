//! `FaultyFs`: an in-memory [`Fs`] that can lose power (tests only).
//!
//! # The model
//!
//! It follows what a journaling Linux filesystem (ext4 `data=ordered`, xfs)
//! may leave after a power loss, erring on the pessimistic side:
//!
//! * **Namespace** (create, rename, unlink) operations go to an ordered log
//!   of pending operations, as in a journal. A power cut keeps a *prefix* of
//!   the log, of a length chosen by the seed (none, all, or anything
//!   between): each operation is atomic (a rename is never half done), and
//!   a later operation never survives without the earlier ones (journals
//!   commit in order). `fsync` of a directory commits the log up to the last
//!   operation that touched that directory. `fdatasync` of a file commits
//!   nothing of the log (a real ext4 often does more: that is not relied
//!   on).
//! * **File data** is durable only up to the last `fdatasync` of that file.
//!   At a cut, each surviving file whose data is not synced gets, by the
//!   seed: its synced content; its whole current content; the current
//!   content up to a sector-aligned point and the synced content (or
//!   zeroes) after it; the synced content with the new length filled with
//!   zeroes (size committed, data never written); or a length anywhere
//!   between the two and each 512-byte sector taken from the new content,
//!   the old content or zeroes. A file that was never synced has an empty
//!   synced content, so "zero-length file after a crash" is included.
//! * **Modification times** fall back to their value at the last
//!   `fdatasync`, or keep the latest one (by the seed).
//!
//! Not modelled: directories (created durably and at once, never removed),
//! the lock file (a lock table, outside the namespace), hard links,
//! truncation, data corruption at rest (bit rot: tests flip bytes on the
//! real filesystem instead), filesystems that reorder namespace operations
//! (btrfs's log tree can), and a cut in the middle of one namespace
//! operation (journals make each atomic).
//!
//! A cut either happens when the test calls [`FaultyFs::power_cut`], or at
//! the N-th file operation after [`FaultyFs::arm`]. After a cut every
//! operation fails with `EIO` (the machine is down; open files are stale
//! forever) until [`FaultyFs::restart`].

use super::fs::{FileStat, Fs, FsFile, FsLock};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// Size of the unit of torn writes.
const SECTOR: usize = 512;

/// A small deterministic generator (SplitMix64), for the cut and the tests.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` if `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A number in `0..n` as `usize`.
    pub(crate) fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the cuts so far did (to check that a test exercised the model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CutReport {
    /// Power cuts.
    pub(crate) cuts: u64,
    /// Pending namespace operations kept by cuts.
    pub(crate) ops_kept: u64,
    /// Pending namespace operations dropped by cuts.
    pub(crate) ops_dropped: u64,
    /// Surviving files whose content was not what was last written.
    pub(crate) files_changed: u64,
}

/// The in-memory filesystem; see the module documentation.
#[derive(Clone, Default)]
pub(crate) struct FaultyFs {
    /// Shared with open files.
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFs").finish_non_exhaustive()
    }
}

/// A namespace operation in the log.
#[derive(Clone, Debug)]
enum MetaOp {
    /// A file was created.
    Link { path: PathBuf, ino: u64 },
    /// A file was renamed (replacing `to`).
    Rename { from: PathBuf, to: PathBuf },
    /// A file was unlinked.
    Unlink { path: PathBuf },
}

impl MetaOp {
    /// Applies the operation to a namespace.
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            Self::Link { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            Self::Rename { from, to } => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
            Self::Unlink { path } => {
                names.remove(path);
            }
        }
    }

    /// Whether the operation changed an entry of `dir`.
    fn touches(&self, dir: &Path) -> bool {
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        match self {
            Self::Link { path, .. } | Self::Unlink { path } => in_dir(path),
            Self::Rename { from, to } => in_dir(from) || in_dir(to),
        }
    }
}

/// A file's content.
#[derive(Debug)]
struct Inode {
    /// What reads see now.
    data: Vec<u8>,
    /// The content as of the last `fdatasync` (empty if never synced).
    synced: Vec<u8>,
    /// Modification time now.
    mtime: SystemTime,
    /// Modification time at the last `fdatasync`.
    synced_mtime: SystemTime,
}

/// When an armed cut fires.
#[derive(Clone, Copy, Debug)]
struct Trigger {
    /// Operations still allowed before the cut.
    ops_left: u64,
    /// Seed of the cut.
    seed: u64,
}

/// Everything, behind one lock.
#[derive(Debug, Default)]
struct State {
    /// Directories (durable at once).
    dirs: BTreeSet<PathBuf>,
    /// The namespace on disk: what a cut starts from.
    durable: BTreeMap<PathBuf, u64>,
    /// The namespace now: `durable` with `log` applied.
    names: BTreeMap<PathBuf, u64>,
    /// Namespace operations not known durable, oldest first.
    log: Vec<MetaOp>,
    /// File contents by inode number.
    inodes: HashMap<u64, Inode>,
    /// Next inode number.
    next_ino: u64,
    /// Bumped by each cut; files opened before are stale.
    epoch: u64,
    /// Power is off: every operation fails.
    dead: bool,
    /// An armed cut.
    trigger: Option<Trigger>,
    /// Locked paths.
    locks: BTreeSet<PathBuf>,
    /// See [`CutReport`].
    report: CutReport,
    /// File writes fail with `ENOSPC` (the filesystem is full).
    no_space: bool,
}

/// The error of every operation while the power is off.
fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// An error with a kind and a message.
fn err(kind: io::ErrorKind, what: &str, path: &Path) -> io::Error {
    io::Error::new(kind, format!("{what}: {}", path.display()))
}

impl State {
    /// Called at the start of every operation: fails if the power is off
    /// (or `epoch`, the caller's, is stale), and fires an armed cut.
    fn begin(&mut self, epoch: Option<u64>) -> io::Result<()> {
        if self.dead || epoch.is_some_and(|e| e != self.epoch) {
            return Err(eio());
        }
        if let Some(t) = &mut self.trigger {
            if t.ops_left == 0 {
                let seed = t.seed;
                self.trigger = None;
                self.cut(seed);
                return Err(eio());
            }
            t.ops_left -= 1;
        }
        Ok(())
    }

    /// Requires `dir` to exist.
    fn need_dir(&self, dir: Option<&Path>, path: &Path) -> io::Result<()> {
        match dir {
            Some(d) if self.dirs.contains(d) => Ok(()),
            _ => Err(err(io::ErrorKind::NotFound, "no such directory", path)),
        }
    }

    /// Records a namespace operation.
    fn log(&mut self, op: MetaOp) {
        op.apply(&mut self.names);
        self.log.push(op);
    }

    /// Loses power; see the module documentation.
    fn cut(&mut self, seed: u64) {
        let mut rng = Rng::new(seed);
        let n = self.log.len();
        let keep = match rng.below(4) {
            0 => 0,
            1 => n,
            _ => rng.below_usize(n + 1),
        };
        for op in &self.log[..keep] {
            op.apply(&mut self.durable);
        }
        self.report.cuts += 1;
        self.report.ops_kept += keep as u64;
        self.report.ops_dropped += (n - keep) as u64;
        self.log.clear();
        self.names = self.durable.clone();
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
        // Sorted, so a seed always produces the same state.
        for ino in &live {
            if let Some(inode) = self.inodes.get_mut(ino)
                && tear(&mut rng, inode)
            {
                self.report.files_changed += 1;
            }
        }
        self.epoch += 1;
        self.dead = true;
    }
}

/// Replaces a file's content by one a power cut may leave; returns whether
/// it differs from what was last written.
fn tear(rng: &mut Rng, inode: &mut Inode) -> bool {
    if rng.chance(50) {
        inode.mtime = inode.synced_mtime;
    }
    inode.synced_mtime = inode.mtime;
    if inode.data == inode.synced {
        return false;
    }
    let old = &inode.synced;
    let new = &inode.data;
    let torn = match rng.below(5) {
        // Nothing written back.
        0 => old.clone(),
        // Everything written back.
        1 => new.clone(),
        // Written back up to a sector boundary.
        2 => {
            let at = rng.below_usize(new.len() / SECTOR + 1) * SECTOR;
            let mut v = new.clone();
            for (i, b) in v.iter_mut().enumerate().skip(at) {
                *b = old.get(i).copied().unwrap_or(0);
            }
            v
        }
        // The new size committed, the new data never written.
        3 => {
            let mut v = old.clone();
            v.resize(new.len(), 0);
            v
        }
        // Any size in between, each sector old, new or zero.
        _ => {
            let (lo, hi) = (old.len().min(new.len()), old.len().max(new.len()));
            let len = lo + rng.below_usize(hi - lo + 1);
            let mut v = vec![0u8; len];
            for (s, sector) in v.chunks_mut(SECTOR).enumerate() {
                let pick = rng.below(3);
                for (j, b) in sector.iter_mut().enumerate() {
                    let i = s * SECTOR + j;
                    *b = match pick {
                        0 => new.get(i).copied().unwrap_or(0),
                        1 => old.get(i).copied().unwrap_or(0),
                        _ => 0,
                    };
                }
            }
            v
        }
    };
    let changed = torn != inode.data;
    inode.data = torn.clone();
    inode.synced = torn;
    changed
}

impl FaultyFs {
    /// An empty filesystem with the power on.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Locks the state.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power before the operation after the next `ops` ones.
    pub(crate) fn arm(&self, ops: u64, seed: u64) {
        self.state().trigger = Some(Trigger {
            ops_left: ops,
            seed,
        });
    }

    /// Cuts the power now (if it is on); disarms an armed cut.
    pub(crate) fn power_cut(&self, seed: u64) {
        let mut st = self.state();
        st.trigger = None;
        if !st.dead {
            st.cut(seed);
        }
    }

    /// Turns the power back on (and disarms an armed cut).
    pub(crate) fn restart(&self) {
        let mut st = self.state();
        st.trigger = None;
        st.dead = false;
    }

    /// Makes every file write fail with `ENOSPC` (`true`), or succeed
    /// again (`false`): a full filesystem.
    pub(crate) fn set_full(&self, full: bool) {
        self.state().no_space = full;
    }

    /// Whether the power is off.
    pub(crate) fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// What the cuts so far did.
    pub(crate) fn report(&self) -> CutReport {
        self.state().report
    }
}

/// An open file of [`FaultyFs`].
struct FaultyFile {
    /// The filesystem.
    state: Arc<Mutex<State>>,
    /// Its inode.
    ino: u64,
    /// The epoch it was opened in.
    epoch: u64,
    /// Opened for writing.
    writable: bool,
}

impl fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFile")
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

impl FaultyFile {
    /// Runs `f` on the inode after the common checks.
    fn with<T>(&self, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.begin(Some(self.epoch))?;
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(eio)?;
        f(inode)
    }
}

impl FsFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .no_space
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.with(|inode| {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let end = start + buf.len();
            if inode.data.len() < end {
                inode.data.resize(end, 0);
            }
            inode.data[start..end].copy_from_slice(buf);
            inode.mtime = SystemTime::now();
            Ok(())
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|inode| {
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            let src = inode
                .data
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn stat(&self) -> io::Result<FileStat> {
        self.with(|inode| {
            Ok(FileStat {
                len: inode.data.len() as u64,
                mtime: inode.mtime,
            })
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|inode| {
            inode.synced = inode.data.clone();
            inode.synced_mtime = inode.mtime;
            Ok(())
        })
    }

    fn set_mtime(&self, mtime: SystemTime) -> io::Result<()> {
        self.with(|inode| {
            inode.mtime = mtime;
            Ok(())
        })
    }
}

/// Holds a lock of [`FaultyFs`].
struct FaultyLock {
    /// The filesystem.
    state: Arc<Mutex<State>>,
    /// The locked path.
    path: PathBuf,
}

impl fmt::Debug for FaultyLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyLock")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for FaultyLock {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.locks.remove(&self.path);
    }
}

impl Fs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.begin(None)?;
        if st.names.contains_key(dir) {
            return Err(err(io::ErrorKind::AlreadyExists, "a file exists", dir));
        }
        for d in dir.ancestors() {
            st.dirs.insert(d.to_owned());
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<FsLock> {
        let mut st = self.state();
        st.begin(None)?;
        if !st.locks.insert(path.to_owned()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(Box::new(FaultyLock {
            state: Arc::clone(&self.state),
            path: path.to_owned(),
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.state();
        st.begin(None)?;
        st.need_dir(path.parent(), path)?;
        if st.names.contains_key(path) || st.dirs.contains(path) {
            return Err(err(io::ErrorKind::AlreadyExists, "exists", path));
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        let now = SystemTime::now();
        st.inodes.insert(
            ino,
            Inode {
                data: Vec::new(),
                synced: Vec::new(),
                mtime: now,
                synced_mtime: now,
            },
        );
        st.log(MetaOp::Link {
            path: path.to_owned(),
            ino,
        });
        Ok(Box::new(FaultyFile {
            state: Arc::clone(&self.state),
            ino,
            epoch: st.epoch,
            writable: true,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.state();
        st.begin(None)?;
        let ino = *st
            .names
            .get(path)
            .ok_or_else(|| err(io::ErrorKind::NotFound, "no such file", path))?;
        Ok(Box::new(FaultyFile {
            state: Arc::clone(&self.state),
            ino,
            epoch: st.epoch,
            writable: false,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.begin(None)?;
        if !st.names.contains_key(from) {
            return Err(err(io::ErrorKind::NotFound, "no such file", from));
        }
        st.need_dir(to.parent(), to)?;
        st.log(MetaOp::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.begin(None)?;
        if !st.names.contains_key(path) {
            return Err(err(io::ErrorKind::NotFound, "no such file", path));
        }
        st.log(MetaOp::Unlink {
            path: path.to_owned(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.begin(None)?;
        st.need_dir(Some(dir), dir)?;
        if let Some(last) = st.log.iter().rposition(|op| op.touches(dir)) {
            let committed: Vec<MetaOp> = st.log.drain(..=last).collect();
            for op in &committed {
                op.apply(&mut st.durable);
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut st = self.state();
        st.begin(None)?;
        st.need_dir(Some(dir), dir)?;
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_owned()))
            .collect())
    }
}
