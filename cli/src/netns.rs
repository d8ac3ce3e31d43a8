//! Named network namespaces, as `ip netns` keeps them: a bind mount of the
//! namespace under `/run/netns/NAME`, so `ip netns exec` works on them too.
//!
//! `setns` moves one thread only (DESIGN.md, settled decision 13), so nothing
//! here switches a thread that runs anything else: work inside a namespace
//! runs on a thread of its own that enters the namespace first, and a command
//! runs there through [`enter_and_exec`], which the binary calls before any
//! runtime starts.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// The bind mount that keeps namespace `name` alive.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates namespace `name` (`ip netns add NAME`).
pub fn create(name: &str) -> Result<()> {
    fs::create_dir_all(NETNS_DIR).with_context(|| format!("create {NETNS_DIR}"))?;
    let target = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .with_context(|| {
            format!(
                "create {}: does namespace {name} exist already?",
                target.display()
            )
        })?;
    let bind = target.clone();
    // A thread of its own: unshare moves only the calling thread into the
    // new namespace, and that thread then ends.
    let made = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare a network namespace (are you root?)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &bind,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind the new namespace to {}", bind.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?;
    if made.is_err() {
        let _ = fs::remove_file(&target);
    }
    made
}

/// Removes namespace `name` (`ip netns del NAME`). Removing one that is
/// gone already is success. The namespace itself, with its links, goes when
/// the last process inside it has gone.
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    let _ = umount2(&target, MntFlags::MNT_DETACH);
    fs::remove_file(&target).with_context(|| format!("remove {}", target.display()))
}

/// Namespaces whose name starts with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The inode that identifies namespace `name`, as `/proc/PID/ns/net` shows it.
pub fn inode(name: &str) -> Option<u64> {
    fs::metadata(path(name)).ok().map(|m| m.ino())
}

/// Processes whose network namespace is one of `inodes`.
pub fn pids_in(inodes: &[u64]) -> Vec<i32> {
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| inodes.contains(&m.ino()))
                .unwrap_or(false)
        })
        .collect()
}

/// Runs `work` on a thread of its own that first enters namespace `name`,
/// and returns its result. Commands it spawns run in that namespace too.
pub fn within<F, T>(name: &str, work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let ns = File::open(path(name)).with_context(|| format!("open namespace {name}"))?;
    let name = name.to_owned();
    std::thread::spawn(move || -> Result<T> {
        setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("enter namespace {name}"))?;
        work().with_context(|| format!("in namespace {name}"))
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// Runs the future `work` builds on a single-threaded runtime started on a
/// thread that entered namespace `name` first (settled decision 13: no
/// tokio worker ever switches namespace).
pub fn block_on<F, Fut, T>(name: &str, work: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    within(name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start a runtime")?;
        rt.block_on(work())
    })
}

/// Runs `work` with an rtnetlink handle bound to namespace `name` (see
/// [`block_on`]).
pub fn run<F, Fut, T>(name: &str, work: F) -> Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    block_on(name, move || async move {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("open a netlink socket")?;
        tokio::spawn(connection);
        work(handle).await
    })
}

/// Writes a sysctl inside namespace `name` (`ip netns exec NAME sysctl -w`).
/// `/proc/sys/net` shows the namespace of the thread that opens it.
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    let setting = format!("{key}={value}");
    let value = value.to_owned();
    within(name, move || {
        fs::write(&file, &value).with_context(|| format!("set {setting}"))
    })
}

/// Replaces this process with `cmd` running inside namespace `netns`, as
/// `ip netns exec` does: a private mount namespace (so `/sys` and
/// `/etc/resolv.conf` can be the namespace's own), then the network
/// namespace, then exec. Must run before any other thread exists.
pub fn enter_and_exec(
    netns: &str,
    resolv_conf: Option<&Path>,
    cmd: &[OsString],
) -> Result<Infallible> {
    let Some(program) = cmd.first() else {
        bail!("no command given to run in namespace {netns}");
    };
    let ns = File::open(path(netns)).with_context(|| format!("no namespace {netns}"))?;
    unshare(CloneFlags::CLONE_NEWNS).context("unshare the mount namespace (are you root?)")?;
    // Keep mounts made below from reaching the host's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("make / a slave mount")?;
    setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("enter namespace {netns}"))?;
    // /sys/class/net shows the namespace of whoever mounted sysfs.
    if umount2("/sys", MntFlags::MNT_DETACH).is_ok() {
        let _ = mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        );
    }
    if let Some(resolv) = resolv_conf {
        mount(
            Some(resolv),
            "/etc/resolv.conf",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind {} to /etc/resolv.conf", resolv.display()))?;
    }
    let to_c = |s: &OsString| CString::new(s.as_bytes()).context("a NUL byte in the command");
    let argv = cmd.iter().map(to_c).collect::<Result<Vec<_>>>()?;
    let program = to_c(program)?;
    let err = nix::unistd::execvp(&program, &argv).unwrap_err();
    Err(anyhow!("run {}: {err}", program.to_string_lossy()))
}
