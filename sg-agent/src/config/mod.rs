//! The rules file: model, parser, validation.

pub mod diagnostics;
pub mod model;
pub mod network_acl;
mod parse;
mod place;
#[cfg(feature = "daemon")]
pub(crate) use parse::PROTOCOL_NAMES;
pub(crate) mod validate;

use std::path::{Path, PathBuf};

pub use diagnostics::{Diagnostic, Diagnostics};
pub use model::*;
pub use network_acl::{AclEntry, NetworkAcl, Subnet};
pub use parse::{DEFAULT_GROUP, is_aws_id};
pub use place::{describe_kind, not_a_namespace_file};
pub use validate::rule_count;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a regular file ({kind}): point sg-agent at the rules file itself", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(
        "{} is {size} bytes, more than the {max} a rules file may have: is it the rules file? \
         (--max-config-bytes raises the bound)",
        path.display()
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error(
        "{}: {why}; a rules file and its directory must be owned by root (or the user running \
         sg-agent) and writable by no one else, as sshd's StrictModes requires, since whoever \
         can write it decides every instance's firewall: fix with `chown root: {} && chmod \
         go-w {}`, or pass --insecure-config",
        path.display(),
        path.display(),
        path.display()
    )]
    Untrusted { path: PathBuf, why: String },
}

/// The largest rules file read unless `--max-config-bytes` says otherwise.
pub const MAX_BYTES: u64 = 16 << 20;

/// How a rules file may be read.
#[derive(Clone, Copy, Debug)]
pub struct ReadPolicy {
    /// Refuse a file larger than this.
    pub max_bytes: u64,
    /// Refuse a file (or directory) that anyone but root or the agent's
    /// own user owns or may write (`run`, unless --insecure-config).
    pub strict_owner: bool,
}

impl Default for ReadPolicy {
    fn default() -> Self {
        Self {
            max_bytes: MAX_BYTES,
            strict_owner: false,
        }
    }
}

/// Who may own and write a rules file: root, or the user sg-agent runs as,
/// and no group or other writer.
fn trusted_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let untrusted = |why: String| ConfigError::Untrusted {
        path: path.to_owned(),
        why,
    };
    if meta.uid() != 0 && meta.uid() != euid() {
        return Err(untrusted(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "writable by {} (mode {:o})",
            if meta.mode() & 0o002 != 0 {
                "anyone"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A directory on the way to a rules file: owned by root or the agent's
/// user, writable by no one else unless sticky (/tmp, where no one may
/// replace another's entry). `shown` is how the path is named in errors.
fn trusted_dir(file: &Path, shown: &Path, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let untrusted = |why: String| ConfigError::Untrusted {
        path: file.to_owned(),
        why,
    };
    if meta.uid() != 0 && meta.uid() != euid() {
        return Err(untrusted(format!(
            "its directory {} is owned by uid {}",
            shown.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(untrusted(format!(
            "its directory {} is writable by others (mode {:o})",
            shown.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}
/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`.
fn open_at(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
    flags: i32,
) -> std::io::Result<std::fs::File> {
    use std::os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    };
    let name = std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: a descriptor just opened, owned by nothing else.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }
}

/// The kernel's `fs.protected_symlinks` rule, which a walk of our own must
/// apply itself (the kernel applies it only to the symlinks it follows):
/// a symlink in a sticky, world-writable directory (/tmp) is followed only
/// if it is the follower's own or the directory owner's, since anyone else
/// there could have planted it. `Some(why)` when `name` in `dir` (shown as
/// `at`) is not to be followed.
fn protected_symlink(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
    at: &Path,
) -> std::io::Result<Option<String>> {
    use std::os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::fs::MetadataExt as _};
    let dir_meta = dir.metadata()?;
    if dir_meta.mode() & 0o1002 != 0o1002 {
        return Ok(None);
    }
    let cname = std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: an all-zero stat is valid; it is only written to.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, a NUL-terminated name and a
    // stat buffer; the link itself is looked at, not what it names.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            cname.as_ptr(),
            &raw mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.st_uid == euid() || st.st_uid == dir_meta.uid() {
        return Ok(None);
    }
    Ok(Some(format!(
        "is a symlink owned by uid {} in the sticky, world-writable directory {} (owned by uid \
         {}): not followed, as the kernel's fs.protected_symlinks would not",
        st.st_uid,
        at.display(),
        dir_meta.uid()
    )))
}

/// The target of the symlink `name` in `dir` (`readlinkat`).
fn read_link_at(dir: &std::fs::File, name: &std::ffi::OsStr) -> std::io::Result<PathBuf> {
    use std::os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _};
    let cname = std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid directory descriptor, a NUL-terminated name and a
    // buffer of the length given.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&buf)))
}

/// Opens `path` a component at a time from `/`, never following a symlink
/// unseen: each directory on the way is opened relative to the one before
/// (`openat` with `O_NOFOLLOW`), checked on its open descriptor when
/// `strict` ([`trusted_dir`]), and a symlink met on the way is read in the
/// directory that holds it, which was checked, and its target walked the
/// same way. So what is read is what was checked: no component can be
/// swapped (for a symlink to an older file, say) between the check and the
/// read, as sshd's `StrictModes` checks every directory up to `/`. The file
/// itself is opened without blocking (a FIFO would wait for a writer).
fn open_walked(path: &Path, strict: bool) -> std::io::Result<Result<std::fs::File, ConfigError>> {
    use std::path::Component;
    const MAX_LINKS: usize = 40;
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    let root = || std::fs::File::open("/");
    // The directories walked so far (the last is the current one), with the
    // path they stand for, for `..` and for errors.
    let mut stack: Vec<(std::fs::File, PathBuf)> = vec![(root()?, PathBuf::from("/"))];
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = absolute
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    let check = |file: &std::fs::File, shown: &Path| -> std::io::Result<Result<(), ConfigError>> {
        if !strict {
            return Ok(Ok(()));
        }
        Ok(trusted_dir(path, shown, &file.metadata()?))
    };
    if let Err(e) = check(&stack[0].0, Path::new("/"))? {
        return Ok(Err(e));
    }
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = pending.is_empty();
        let (dir, at) = stack.last().expect("the root stays");
        let shown = at.join(&name);
        let flags = if last {
            libc::O_RDONLY | libc::O_NONBLOCK
        } else {
            libc::O_RDONLY | libc::O_DIRECTORY
        };
        match open_at(dir, &name, flags) {
            Ok(file) if last => return Ok(Ok(file)),
            Ok(sub) => {
                if let Err(e) = check(&sub, &shown)? {
                    return Ok(Err(e));
                }
                stack.push((sub, shown));
            }
            // A symlink (O_NOFOLLOW) or, for a directory, not one: read it
            // as a link where it is.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                let target = read_link_at(dir, &name).map_err(|_| e)?;
                if let Some(why) = protected_symlink(dir, &name, at)? {
                    return Ok(Err(ConfigError::Untrusted {
                        path: path.to_owned(),
                        why: format!("{} {why}", shown.display()),
                    }));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push_front(n.to_owned()),
                        Component::ParentDir => pending.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    // A path naming `/` itself, or ending in `..`.
    Err(std::io::Error::from_raw_os_error(libc::EISDIR))
}

/// Parses and validates rules-file text; every error is reported.
pub fn from_str(path: &Path, text: &str) -> Result<Vpc, Box<Diagnostics>> {
    from_str_overlaid(path, text, |_| {})
}

/// [`from_str`], with `overlay` laid over the parsed description before it
/// is validated (the instances libvirt's domains bring: see
/// `libvirt::overlay`).
pub fn from_str_overlaid(
    path: &Path,
    text: &str,
    overlay: impl FnOnce(&mut Vpc),
) -> Result<Vpc, Box<Diagnostics>> {
    diagnostics::reset_suggestions();
    let (mut vpc, mut items) = parse::parse(text);
    overlay(&mut vpc);
    let stale = validate::stale_references(&vpc);
    vpc.warnings.extend(stale);
    if items.is_empty() {
        items = validate::validate(&vpc);
    } else {
        // Reference errors are still worth showing next to syntax errors.
        items.extend(validate::validate(&vpc));
        items.sort_by_key(|d| d.span.start);
        items.dedup();
    }
    if items.is_empty() {
        Ok(vpc)
    } else {
        // Shown with the errors, in file order.
        items.extend(vpc.warnings);
        items.sort_by_key(|d| d.span.start);
        Err(Box::new(Diagnostics::new(
            path.to_owned(),
            text.to_owned(),
            items,
        )))
    }
}

/// `vpc`'s warnings as `check` shows them (where, the line, a
/// hint), or `None` when there are none.
/// `brief`: without the file's lines (the daemon's log).
pub fn render_warnings(path: &Path, text: &str, vpc: &Vpc, brief: bool) -> Option<String> {
    (!vpc.warnings.is_empty()).then(|| {
        let d = Diagnostics::new(path.to_owned(), text.to_owned(), vpc.warnings.clone());
        if brief { d.brief() } else { d }.to_string()
    })
}

/// Reads, parses and validates a rules file. The file is read once, and
/// what was read is what is validated and returned. Only a regular file is
/// read: a FIFO or a device is refused without blocking on it.
pub fn load(path: &Path) -> Result<Vpc, ConfigError> {
    let file = read(path)?;
    from_str(path, &file.text).map_err(|d| ConfigError::Invalid(*d))
}

/// The bytes of a rules file as read, with what identifies them: the
/// agent compares the stamp with the path's to notice a change it was not
/// told of, and the digest to skip a "change" that changed nothing.
#[derive(Clone, Debug)]
pub struct RulesFile {
    pub text: String,
    pub stamp: FileStamp,
    /// SHA-256 of `text`.
    pub sha256: [u8; 32],
}

impl RulesFile {
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// `bytes` in lowercase hexadecimal (a digest as logs and `status` show it).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What tells one version of a file from another without reading it:
/// device and inode (a file renamed over it, a symlink swapped), size, and
/// the modification and change times (a rewrite in place; the change time
/// cannot be set back by a writer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    /// The stamp of what `path` names now (following symlinks), if anything.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// Reads a rules file once: a regular file only (a FIFO or a device is
/// refused without blocking on it), stamped from the open file itself so
/// the stamp describes exactly the bytes read.
pub fn read(path: &Path) -> Result<RulesFile, ConfigError> {
    read_with(path, ReadPolicy::default())
}

/// [`read`], bounded and checked as `policy` says.
pub fn read_with(path: &Path, policy: ReadPolicy) -> Result<RulesFile, ConfigError> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    // Every directory from `/` checked on the way (with --insecure-config
    // or for `check`, only walked), the file opened without blocking.
    let file = open_walked(path, policy.strict_owner).map_err(read_err)??;
    let meta = file.metadata().map_err(read_err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let kind = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(ConfigError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    if meta.len() > policy.max_bytes {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            size: meta.len(),
            max: policy.max_bytes,
        });
    }
    if policy.strict_owner {
        trusted_file(path, &meta)?;
    }
    let mut text = String::new();
    // Bounded again while reading: the file may grow after the check.
    file.take(policy.max_bytes + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > policy.max_bytes {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            size: text.len() as u64,
            max: policy.max_bytes,
        });
    }
    let sha256 = sha2::Sha256::digest(text.as_bytes()).into();
    Ok(RulesFile {
        text,
        stamp: FileStamp::of(&meta),
        sha256,
    })
}
