//! The memory cache's budget: blob memory is memfd memory, which cannot be
//! swapped out without swap, so the budget is a hard limit and must fit in
//! what the machine (and the server's cgroup) really has.

use std::path::Path;

/// The default budget is this fraction of `MemAvailable`...
pub(crate) const AVAILABLE_FRACTION: u64 = 4;
/// ...capped at this fraction of the cgroup's `memory.max`.
pub(crate) const CGROUP_FRACTION: u64 = 2;

/// What the machine offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryLimits {
    /// `MemAvailable` from `/proc/meminfo`, in bytes.
    pub(crate) available: u64,
    /// The cgroup v2 `memory.max` of this process, if limited.
    pub(crate) cgroup_max: Option<u64>,
}

impl MemoryLimits {
    /// Reads `/proc/meminfo` and this process's cgroup.
    pub(crate) fn read() -> std::io::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let available = parse_meminfo(&meminfo, "MemAvailable:")
            .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemAvailable line"))?;
        let cgroup_max = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|c| cgroup_memory_max(&c, Path::new("/sys/fs/cgroup")));
        Ok(Self {
            available,
            cgroup_max,
        })
    }

    /// The default budget.
    pub(crate) fn default_budget(&self) -> u64 {
        let b = self.available / AVAILABLE_FRACTION;
        match self.cgroup_max {
            Some(m) => b.min(m / CGROUP_FRACTION),
            None => b,
        }
    }

    /// Checks an explicit budget; the error says why it cannot work.
    pub(crate) fn check(&self, budget: u64) -> Result<(), String> {
        if let Some(m) = self.cgroup_max
            && budget > m
        {
            return Err(format!(
                "--mem-cache-bytes {budget} exceeds this cgroup's memory.max of {m} bytes; the cache would be OOM-killed before it filled"
            ));
        }
        if budget > self.available {
            return Err(format!(
                "--mem-cache-bytes {budget} exceeds the memory available now ({} bytes, MemAvailable); blob memory cannot be swapped out",
                self.available
            ));
        }
        Ok(())
    }
}

/// A `kB` line of `/proc/meminfo`, in bytes.
fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// `memory.max` of the cgroup v2 named in `/proc/self/cgroup` (`0::/path`),
/// under `root`; `None` for "max", cgroup v1, or anything unreadable.
fn cgroup_memory_max(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let path = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_start_matches('/');
    let text = std::fs::read_to_string(root.join(path).join("memory.max")).ok()?;
    text.trim().parse().ok()
}

/// Parses a byte count with an optional binary suffix: `512M`, `2GiB`,
/// `1073741824`.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count (examples: 1073741824, 512M, 2G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use K, M, G or T)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_units_parse() {
        let m = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo(m, "MemAvailable:"), Some(20_000_000 * 1024));
        assert_eq!(parse_meminfo(m, "Shmem:"), None);
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn budget_is_capped_by_the_cgroup_and_checked() {
        let l = MemoryLimits {
            available: 8 << 30,
            cgroup_max: Some(2 << 30),
        };
        assert_eq!(l.default_budget(), 1 << 30);
        assert!(l.check(1 << 30).is_ok());
        assert!(l.check(3 << 30).unwrap_err().contains("memory.max"));
        let l = MemoryLimits {
            available: 8 << 30,
            cgroup_max: None,
        };
        assert_eq!(l.default_budget(), 2 << 30);
        assert!(l.check(9 << 30).unwrap_err().contains("MemAvailable"));
    }

    #[test]
    fn cgroup_file_is_read_from_the_named_path() {
        let dir = std::env::temp_dir().join(format!("cradle-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("user.slice")).unwrap();
        std::fs::write(dir.join("user.slice/memory.max"), "1048576\n").unwrap();
        assert_eq!(cgroup_memory_max("0::/user.slice\n", &dir), Some(1 << 20));
        std::fs::write(dir.join("user.slice/memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_max("0::/user.slice\n", &dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
