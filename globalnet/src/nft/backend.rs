//! Where a table lives: the kernel through the `nft` binary, or memory.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::diff::{Batch, Observed, ObservedChain, Op};
use super::model::Family;
use super::render::{parse_listing, render};
use crate::Error;

/// A place that holds nftables tables. Calls block (they run `nft`); async
/// callers use `spawn_blocking`.
pub trait Backend {
    /// What the table holds now, or `None` when there is no such table.
    fn observe(&self, family: Family, table: &str) -> Result<Option<Observed>, Error>;
    /// Applies one transaction: all of it or nothing.
    fn apply(&self, batch: &Batch) -> Result<(), Error>;
}

/// The kernel, through the `nft` binary with JSON in and out
/// (`nft -j list table`, `nft -j -f -`).
#[derive(Clone, Debug)]
pub struct NftCli {
    command: Vec<OsString>,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            command: vec!["nft".into()],
        }
    }
}

impl NftCli {
    /// Runs `nft` from `PATH` in the caller's network namespace.
    pub fn new() -> Self {
        NftCli::default()
    }

    /// Runs this command line instead of `nft` (for example
    /// `["ip", "netns", "exec", "NS", "nft"]`); arguments are appended.
    pub fn with_command<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let command: Vec<OsString> = command.into_iter().map(Into::into).collect();
        assert!(!command.is_empty(), "an nft command line needs a program");
        NftCli { command }
    }

    /// Runs `nft` inside network namespace `ns` via `ip netns exec`, so no
    /// thread of this process changes namespace.
    pub fn in_netns(ns: &str) -> Self {
        NftCli::with_command(["ip", "netns", "exec", ns, "nft"])
    }

    fn command(&self, args: &[&str]) -> (Command, String) {
        let mut cmd = Command::new(&self.command[0]);
        // Errors are recognised by their text ("No such file or directory").
        cmd.args(&self.command[1..]).args(args).env("LC_ALL", "C");
        let shown = self
            .command
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .chain(args.iter().map(|s| s.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        (cmd, shown)
    }

    /// Runs `nft -j -f -` with a raw JSON document (used by benchmarks).
    pub fn apply_json(&self, table: &str, doc: &str) -> Result<(), Error> {
        let (mut cmd, shown) = self.command(&["-j", "-f", "-"]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::RunCommand {
                command: shown.clone(),
                source,
            })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let written = stdin.write_all(doc.as_bytes());
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|source| Error::RunCommand {
                command: shown.clone(),
                source,
            })?;
        written.map_err(|source| Error::RunCommand {
            command: shown.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::ProgramNat {
                table: table.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

impl Backend for NftCli {
    fn observe(&self, family: Family, table: &str) -> Result<Option<Observed>, Error> {
        let (mut cmd, shown) = self.command(&["-j", "list", "table", family.as_str(), table]);
        let out = cmd.output().map_err(|source| Error::RunCommand {
            command: shown.clone(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(Error::ObserveTable {
                table: table.to_string(),
                reason: format!("{shown}: {}", stderr.trim()),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        parse_listing(family, table, &text)
            .map(Some)
            .map_err(|e| Error::ObserveTable {
                table: table.to_string(),
                reason: e.to_string(),
            })
    }

    fn apply(&self, batch: &Batch) -> Result<(), Error> {
        let doc = render(batch).to_string();
        self.apply_json(&batch.table, &doc)
    }
}

/// An in-memory stand-in for the kernel, for unit tests. It applies batches
/// as `nft` would, failing where `nft` fails (adding a map key that exists,
/// deleting a chain that still has rules, touching what does not exist), and
/// keeps every batch it applied.
#[derive(Debug, Default)]
pub struct FakeNft {
    tables: Mutex<std::collections::BTreeMap<(Family, String), Observed>>,
    applied: Mutex<Vec<Batch>>,
}

impl FakeNft {
    /// An empty kernel.
    pub fn new() -> Self {
        FakeNft::default()
    }

    /// Every batch applied so far, oldest first.
    pub fn applied(&self) -> Vec<Batch> {
        self.applied.lock().expect("lock").clone()
    }

    /// What the fake holds for one table (like `nft list table`).
    pub fn dump(&self, family: Family, table: &str) -> Option<Observed> {
        self.tables
            .lock()
            .expect("lock")
            .get(&(family, table.to_string()))
            .cloned()
    }

    /// Replaces a table's content behind the applier's back (drift).
    pub fn set_table(&self, family: Family, table: &str, content: Option<Observed>) {
        let mut tables = self.tables.lock().expect("lock");
        match content {
            Some(c) => tables.insert((family, table.to_string()), c),
            None => tables.remove(&(family, table.to_string())),
        };
    }
}

fn fake_err(batch: &Batch, what: String) -> Error {
    Error::ProgramNat {
        table: batch.table.clone(),
        stderr: what,
    }
}

impl Backend for FakeNft {
    fn observe(&self, family: Family, table: &str) -> Result<Option<Observed>, Error> {
        Ok(self.dump(family, table))
    }

    fn apply(&self, batch: &Batch) -> Result<(), Error> {
        let mut tables = self.tables.lock().expect("lock");
        let key = (batch.family, batch.table.clone());
        // Work on a copy: a failed transaction changes nothing.
        let mut cur: Option<Observed> = tables.get(&key).cloned();
        for op in &batch.ops {
            if let Op::AddTable = op {
                cur.get_or_insert_with(Observed::default);
                continue;
            }
            if let Op::DeleteTable = op {
                if cur.take().is_none() {
                    return Err(fake_err(batch, "delete table: no such table".into()));
                }
                continue;
            }
            let Some(t) = cur.as_mut() else {
                return Err(fake_err(batch, format!("{op:?}: no such table")));
            };
            match op {
                Op::AddTable | Op::DeleteTable => unreachable!("handled above"),
                Op::AddChain { name, base } => {
                    let c = t.chains.entry(name.clone()).or_insert(ObservedChain {
                        base: *base,
                        rule_comments: Vec::new(),
                    });
                    if c.base != *base {
                        return Err(fake_err(batch, format!("chain {name}: hook mismatch")));
                    }
                }
                Op::FlushChain(name) => match t.chains.get_mut(name) {
                    Some(c) => c.rule_comments.clear(),
                    None => return Err(fake_err(batch, format!("flush chain {name}: none"))),
                },
                Op::DeleteChain(name) => match t.chains.get(name) {
                    Some(c) if !c.rule_comments.is_empty() => {
                        return Err(fake_err(batch, format!("delete chain {name}: busy")));
                    }
                    Some(_) => {
                        t.chains.remove(name);
                    }
                    None => return Err(fake_err(batch, format!("delete chain {name}: none"))),
                },
                Op::AddRule { chain, rule } => match t.chains.get_mut(chain) {
                    Some(c) => c.rule_comments.push(Some(rule.kernel_comment())),
                    None => return Err(fake_err(batch, format!("add rule {chain}: no chain"))),
                },
                Op::AddSet { name, set } => {
                    let s = t.sets.entry(name.clone()).or_insert_with(|| set.clone());
                    if !s.same_declaration(set) {
                        return Err(fake_err(batch, format!("set {name}: type mismatch")));
                    }
                }
                Op::DeleteSet { name, .. } => {
                    if t.sets.remove(name).is_none() {
                        return Err(fake_err(batch, format!("delete set {name}: none")));
                    }
                }
                Op::AddElements { set, elements } => {
                    let Some(s) = t.sets.get_mut(set) else {
                        return Err(fake_err(batch, format!("add element {set}: no set")));
                    };
                    for (k, v) in elements {
                        if v.is_some() != s.is_map() {
                            return Err(fake_err(batch, format!("add element {set}: kind")));
                        }
                        match s.elements.get(k) {
                            Some(old) if old != v => {
                                return Err(fake_err(batch, format!("add element {set}: exists")));
                            }
                            _ => {
                                s.elements.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                Op::DeleteElements { set, keys } => {
                    let Some(s) = t.sets.get_mut(set) else {
                        return Err(fake_err(batch, format!("delete element {set}: no set")));
                    };
                    for k in keys {
                        if s.elements.remove(k).is_none() {
                            return Err(fake_err(batch, format!("delete element {set}: none")));
                        }
                    }
                }
            }
        }
        match cur {
            Some(c) => tables.insert(key, c),
            None => tables.remove(&key),
        };
        self.applied.lock().expect("lock").push(batch.clone());
        Ok(())
    }
}
