//! State that outlives the agent, on bpffs: each instance's maps and links
//! are pinned under `<state dir>/<instance>/`, so a killed agent leaves the
//! programs attached and the connection tables in place (a firewall fails
//! closed), and the next agent adopts them (as Cilium keeps its maps and
//! bpfman its links across restarts).
//!
//! A map is pinned under its name, which changes with its layout (see
//! `sg_common::maps`). A pinned map of another layout is replaced before
//! any program reads it, and a pin of a name this build does not use (an
//! earlier version's map) is removed once the new programs are attached;
//! both are logged with what was lost. A link is pinned under the place it is attached to:
//! `link-<hook>@<netns inode>_<ifindex>` (bpffs refuses dots in names), so a
//! link whose interface (or whole namespace) was deleted and recreated is
//! told apart from a live one.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where the agent pins its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/sg-agent";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "the state directory {} is not on a BPF filesystem: give --state-dir a path under {BPFFS}",
        .0.display()
    )]
    NotBpffs(PathBuf),
    #[error("mounting bpffs on {BPFFS}: {0} (sg-agent must run as root)")]
    Mount(#[source] nix::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A directory of the state that someone else could have prepared: the
    /// agent pins only into directories it made (or root did), that no one
    /// else may write, and that are no symlinks.
    #[error(
        "{}: {why}: refused, since whoever prepared it could remove the pins that keep instances \
         enforced; remove it (after `sg-agent detach --all` if an agent used it) and start again",
        path.display()
    )]
    Untrusted { path: PathBuf, why: String },
    /// Another process (an agent) holds the state directory's lock.
    #[error(
        "{}: held by a running sg-agent{holder}: stop it first; two agents on one state (or a \
         detach under a running agent) would take its instances' programs off while it reports \
         them enforced",
        path.display()
    )]
    Held { path: PathBuf, holder: String },
}

/// Makes `dir` (its parent exists) mode 0700 if it is not there, whatever
/// the umask, and checks what is there as sshd's `StrictModes` checks a
/// home: a directory, not a symlink, owned by this user or root, writable
/// by no one else.
///
/// On bpffs, where any user may make a directory under `/sys/fs/bpf` (a
/// sticky directory, as /tmp) before the agent first starts (bpffs is
/// empty after every boot), root takes the name back: what is there is
/// set aside under another name (nothing of the agent's was ever pinned
/// into it) and the directory is made anew. Refusing would leave every
/// instance unenforced because someone ran `mkdir`.
fn own_dir(dir: &Path) -> Result<(), PinError> {
    /// A user who makes the name again each time it is set aside is not
    /// raced forever.
    const TRIES: usize = 8;
    for _ in 0..TRIES {
        make_dir(dir)?;
        let Err(why) = trusted(dir)? else {
            return Ok(());
        };
        if !take_back(dir, &why)? {
            return Err(PinError::Untrusted {
                path: dir.to_owned(),
                why,
            });
        }
    }
    Err(PinError::Untrusted {
        path: dir.to_owned(),
        why: format!("made again by someone else each of the {TRIES} times it was set aside"),
    })
}

fn make_dir(dir: &Path) -> Result<(), PinError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// `Ok(Err(why))` when `dir` is not the agent's to pin into.
fn trusted(dir: &Path) -> Result<Result<(), String>, PinError> {
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if meta.file_type().is_symlink() {
        return Ok(Err("a symlink".into()));
    }
    if !meta.is_dir() {
        return Ok(Err("not a directory".into()));
    }
    if meta.uid() != euid() && meta.uid() != 0 {
        return Ok(Err(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Ok(Err(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(Ok(()))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets `dir` aside (root, on bpffs): renamed to a name of its own beside
/// it, never over anything (`RENAME_NOREPLACE`). False when it is not the
/// agent's to take back (not root, not on bpffs).
fn take_back(dir: &Path, why: &str) -> Result<bool, PinError> {
    if euid() != 0 || !dir.starts_with(BPFFS) || dir == Path::new(BPFFS) {
        return Ok(false);
    }
    let Some(name) = dir.file_name() else {
        return Ok(false);
    };
    // bpffs refuses dots in names.
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir.with_file_name(format!(
        "{}-set-aside-{unix}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    match nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        dir,
        nix::fcntl::AT_FDCWD,
        &aside,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {
            log::warn!(
                "{}: {why}: someone else made it before the agent; set aside as {} (nothing of \
                 the agent's was in it) and made anew",
                dir.display(),
                aside.display()
            );
            Ok(true)
        }
        // Gone meanwhile: made anew on the next try.
        Err(nix::errno::Errno::ENOENT) => Ok(true),
        Err(e) => Err(io_err(dir)(io::Error::from(e))),
    }
}

/// Every directory from the first one below bpffs's root (or the first
/// that does not exist) down to `dir`, made and checked with [`own_dir`].
fn own_path(dir: &Path) -> Result<(), PinError> {
    let mut made = PathBuf::new();
    for part in dir.components() {
        made.push(part);
        let below_bpffs = made.starts_with(BPFFS) && made != Path::new(BPFFS);
        if below_bpffs || !made.exists() {
            own_dir(&made)?;
        }
    }
    Ok(())
}

/// Removes the instances under the state directory `root` that have
/// pinned maps but no pinned link: loaded (a start or reload in progress,
/// an instance waiting for its interface) and never attached, so enforcing
/// nothing. How many. The agent calls it as it exits without stopping
/// cleanly (its stop deadline passed), when nothing may outlive it.
pub fn remove_unattached(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for dir in entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    {
        let linked = fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().starts_with("link-"));
        if !linked && fs::remove_dir_all(dir.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The process holding a `flock` on the file of device `dev` and inode
/// `ino`, from /proc/locks (`1: FLOCK ADVISORY WRITE 812 00:2a:1045 0 EOF`).
fn lock_holder(dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&want.as_str()))
                .then(|| fields.get(4)?.parse().ok())
                .flatten()
        })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where an attachment is: a network namespace (by inode) and an interface
/// index in it. Both change when the namespace or interface is recreated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlaceId {
    pub netns_inode: u64,
    pub ifindex: u32,
}

/// Which program a link attaches, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// The instance's inbound at XDP (driver mode) of its own interface.
    XdpNative,
    /// The instance's inbound at XDP (generic mode) of its own interface.
    XdpGeneric,
    /// The instance's inbound at TC ingress of its own interface.
    TcIngress,
    /// The instance's outbound at TC egress of its own interface.
    TcEgress,
    /// The host side of its link: the instance's inbound is what the host
    /// sends into it, at TC egress.
    HostTcEgress,
    /// The host side: the instance's outbound is what comes out of it, at
    /// TC ingress.
    HostTcIngress,
}

impl Hook {
    const ALL: [Self; 6] = [
        Self::XdpNative,
        Self::XdpGeneric,
        Self::TcIngress,
        Self::TcEgress,
        Self::HostTcEgress,
        Self::HostTcIngress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::XdpNative => "xdp-native",
            Self::XdpGeneric => "xdp-generic",
            Self::TcIngress => "tc-ingress",
            Self::TcEgress => "tc-egress",
            Self::HostTcEgress => "host-tc-egress",
            Self::HostTcIngress => "host-tc-ingress",
        }
    }

    /// How `status` and the log name the hook that judges the instance's
    /// inbound.
    pub fn inbound_label(self) -> &'static str {
        match self {
            Self::XdpNative => "XDP (driver mode)",
            Self::XdpGeneric => "XDP (generic mode)",
            Self::TcIngress | Self::TcEgress => "TC",
            Self::HostTcEgress | Self::HostTcIngress => "TC egress of the host side",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// The state directory: one subdirectory per instance.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    /// The directory, locked (`flock`, exclusive) for as long as this value
    /// lives: by the agent for its whole run, by `detach` while it works.
    lock: Option<fs::File>,
}

impl StateDir {
    /// Opens (creating it) the state directory, mounting bpffs on
    /// /sys/fs/bpf first if nothing is mounted there.
    pub fn open(root: &Path) -> Result<Self, PinError> {
        if root.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)) {
            nix::mount::mount(
                Some("bpf"),
                BPFFS,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(PinError::Mount)?;
            log::info!("mounted bpffs on {BPFFS}");
        }
        own_path(root)?;
        if !is_bpffs(root) {
            return Err(PinError::NotBpffs(root.to_owned()));
        }
        Ok(Self {
            root: root.to_owned(),
            lock: None,
        })
    }

    /// [`StateDir::open`], and takes the directory's lock, held until this
    /// value is dropped (the process's end releases it too, whatever ends
    /// it): one agent per state directory, and no `detach` under a running
    /// one. Never waits: a held lock is an error naming its holder.
    pub fn open_locked(root: &Path) -> Result<Self, PinError> {
        use std::os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _};
        let mut state = Self::open(root)?;
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(root)
            .map_err(io_err(root))?;
        // SAFETY: a descriptor this function owns.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(root)(e));
            }
            let holder = dir
                .metadata()
                .ok()
                .and_then(|m| lock_holder(m.dev(), m.ino()))
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(PinError::Held {
                path: root.to_owned(),
                holder,
            });
        }
        state.lock = Some(dir);
        Ok(state)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn instance(&self, name: &str) -> InstancePins {
        InstancePins {
            dir: self.root.join(name),
        }
    }

    /// The instances that have pinned state.
    pub fn instances(&self) -> Result<Vec<String>, PinError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// One instance's pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancePins {
    dir: PathBuf,
}

impl InstancePins {
    /// The state directory these pins are under.
    pub fn state_root(&self) -> Option<&Path> {
        self.dir.parent()
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    pub fn create(&self) -> Result<(), PinError> {
        own_dir(&self.dir)
    }

    /// Whether the links of an attachment are pinned here: `want` of them.
    pub fn links_pinned(&self, want: usize) -> bool {
        self.links().len() >= want
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn link(&self, hook: Hook, place: PlaceId) -> PathBuf {
        self.dir.join(format!(
            "link-{}@{}_{}",
            hook.as_str(),
            place.netns_inode,
            place.ifindex
        ))
    }

    /// The links pinned here: (path, hook, place).
    pub fn links(&self) -> Vec<(PathBuf, Hook, PlaceId)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (hook, place) = name.strip_prefix("link-")?.split_once('@')?;
                let (ns, ifindex) = place.split_once('_')?;
                Some((
                    e.path(),
                    Hook::parse(hook)?,
                    PlaceId {
                        netns_inode: ns.parse().ok()?,
                        ifindex: ifindex.parse().ok()?,
                    },
                ))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Pins that are neither a link nor a map of this build: maps of an
    /// earlier version, which its programs used until they were replaced.
    pub fn foreign(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with("link-")
                    && !sg_common::maps::PINNED.iter().any(|l| l.name == name)
            })
            .map(|e| e.path())
            .collect();
        out.sort();
        out
    }

    /// Moves the pins to another instance name (a rename in the rules
    /// file): the links stay attached throughout.
    pub fn rename(&mut self, to: &InstancePins) -> Result<(), PinError> {
        fs::rename(&self.dir, &to.dir).map_err(io_err(&self.dir))?;
        self.dir.clone_from(&to.dir);
        Ok(())
    }

    /// Unpins everything: the pinned links are detached at once (whoever
    /// still holds them), maps whose last holder is gone are freed.
    pub fn remove(&self) -> Result<(), PinError> {
        // The links' programs leave their hooks now, whoever else holds
        // the links.
        for (path, _, _) in self.links() {
            if let Err(e) = super::detach::by_pin(&path) {
                log::warn!("detaching the link pinned at {}: {e}", path.display());
            }
        }
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.dir)(e)),
            _ => Ok(()),
        }
    }
}

/// The place of `ifname` in the current thread's network namespace.
pub fn place_here(ifname: &str) -> io::Result<PlaceId> {
    let netns_inode = fs::metadata("/proc/thread-self/ns/net")?.ino();
    let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(io::Error::from)?;
    Ok(PlaceId {
        netns_inode,
        ifindex,
    })
}

/// Whether a link pin for `place` is in any instance directory of the
/// state directory `root`.
pub fn pins_place(root: &Path, place: PlaceId) -> bool {
    let suffix = format!("@{}_{}", place.netns_inode, place.ifindex);
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .any(|inst| {
            inst.file_type().is_ok_and(|t| t.is_dir())
                && fs::read_dir(inst.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|f| {
                        let name = f.file_name();
                        let name = name.to_string_lossy();
                        name.starts_with("link-") && name.ends_with(&suffix)
                    })
        })
}
