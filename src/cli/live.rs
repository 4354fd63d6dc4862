//! Whether a live writer holds a directory, told without touching it: the kernel's table of
//! `flock`s (`/proc/locks`) lists every lock with the device and inode it is on. Taking a lock,
//! even a shared one for a moment, could make a writer starting at that instant fail its own.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use keel_engine::LOCK_FILE;

/// The pid of the process holding a `flock` on `dir` or on its `LOCK` file, if any (`None` also
/// where `/proc/locks` cannot be read: no claim is made then).
pub fn writer_pid(dir: &Path) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    let targets: Vec<String> = [dir.to_path_buf(), dir.join(LOCK_FILE)]
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| {
            let dev = meta.dev();
            let (major, minor) = (libc::major(dev), libc::minor(dev));
            format!("{major:02x}:{minor:02x}:{}", meta.ino())
        })
        .collect();
    table.lines().find_map(|line| holder_of(line, &targets))
}

/// The pid of a `/proc/locks` line's `FLOCK` if it is on one of `targets` (`maj:min:inode`).
fn holder_of(line: &str, targets: &[String]) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; a blocked waiter's line has "->" first.
    let at = fields.iter().position(|f| *f == "FLOCK")?;
    if fields.get(1) == Some(&"->") {
        return None;
    }
    let pid = fields.get(at + 3)?.parse().ok()?;
    let file = fields.get(at + 4)?;
    targets.iter().any(|t| t == file).then_some(pid)
}

/// The note a read-only tool prints about a live writer.
pub fn note(dir: &Path) -> Option<String> {
    writer_pid(dir).map(|pid| {
        format!(
            "a live writer (pid {pid}) holds {}: what follows is a snapshot of a directory in use \
             (nothing was written)",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_their_holder() {
        let targets = vec!["08:01:1234".to_string()];
        assert_eq!(
            holder_of("1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF", &targets),
            Some(4242)
        );
        assert_eq!(
            holder_of("1: FLOCK  ADVISORY  WRITE 4242 08:01:999 0 EOF", &targets),
            None
        );
        assert_eq!(
            holder_of(
                "1: -> FLOCK  ADVISORY  WRITE 4243 08:01:1234 0 EOF",
                &targets
            ),
            None
        );
        assert_eq!(
            holder_of("2: POSIX  ADVISORY  WRITE 7 08:01:1234 0 EOF", &targets),
            None
        );
    }

    #[test]
    fn a_held_directory_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(writer_pid(dir.path()), None);
        let file = std::fs::File::open(dir.path()).unwrap();
        // SAFETY: a valid fd owned by `file` for the duration of the call.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(writer_pid(dir.path()), Some(std::process::id()));
    }
}
