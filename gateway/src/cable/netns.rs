//! Running work inside a network namespace without moving the caller.
//!
//! `setns` changes one thread only, and a tokio worker must never change
//! namespace (Settled decision 13). So work bound to a namespace runs on a
//! fresh std thread that enters it and then ends; threads it spawns (boringtun's
//! event loop, a `wireguard-go` child) inherit the namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::Error;

/// Runs `f` in the network namespace at `netns` (a file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`), or right here when `None`.
pub fn run_in<T, F>(netns: Option<&Path>, f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce() -> Result<T, Error> + Send,
{
    let Some(path) = netns else {
        return f();
    };
    let fail = |detail: String| Error::EnterNetns {
        path: path.to_owned(),
        detail,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(path).map_err(|e| fail(e.to_string()))?;
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| fail(e.to_string()))?;
                f()
            })
            .join()
            .map_err(|_| fail("the thread panicked".into()))?
    })
}

/// The file of a named namespace (`ip netns add NAME` makes `/run/netns/NAME`).
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_here_without_a_namespace() {
        let here = std::thread::current().id();
        assert_eq!(
            run_in(None, || Ok(std::thread::current().id())).unwrap(),
            here
        );
    }

    #[test]
    fn a_missing_namespace_is_a_clear_error() {
        let path = Path::new("/run/netns/causeway-no-such-namespace");
        let err = run_in(Some(path), || Ok(())).unwrap_err().to_string();
        assert!(err.contains("causeway-no-such-namespace"), "{err}");
        assert_eq!(named("x"), Path::new("/run/netns/x"));
    }
}
