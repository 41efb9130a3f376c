//! Leases: one holder at a time per lake for the commands whose work is not idempotent (the
//! scheduler writes each slot's output once, the watch delivers each alert once). Appends
//! need none: they are safe with many writers (optimistic concurrency, `docs/lake.md`).
//!
//! A lease is a numbered series of small JSON files, `_prism/leases/<name>/<generation>.json`,
//! each written create-only (the same atomic "if none exists" put that Delta commits use, in
//! S3 too), so of two processes writing the next generation exactly one succeeds. The holder
//! writes a new generation every third of the lease's time to live; a process that finds the
//! newest generation expired (not renewed for its time to live), released, or held by a dead
//! process on its own machine takes the lease by writing the next one. A holder whose renewal
//! finds the next generation written by someone else has lost the lease: [`Lease::lost`] tells
//! it to stop. A holder paused longer than the time to live (a stopped VM) may overlap its
//! successor until its next renewal; the commands that lease say what that costs (at worst a
//! slot or an alert handled twice, never lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Lake, LakeError, Result};

/// The lease time to live that commands use: a killed holder on another machine is replaced
/// within this; one on the same machine at once.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Who holds a lease, as its newest file says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    /// Unique per acquisition (a process that leases twice holds two IDs).
    pub id: String,
    /// What holds it, e.g. `prism schedule serve`.
    pub command: String,
    pub host: String,
    /// The kernel's boot ID (Linux): with `host`, tells whether `pid` is a process here.
    #[serde(default)]
    pub boot_id: String,
    pub pid: u32,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub ttl_seconds: u64,
    /// Set in the file a holder writes when it is done.
    #[serde(default)]
    pub released: bool,
}

impl Holder {
    fn expires_at(&self) -> DateTime<Utc> {
        self.renewed_at + TimeDelta::seconds(self.ttl_seconds as i64)
    }

    /// Whether this is a process on this machine that no longer runs.
    fn is_dead_here(&self) -> bool {
        let me = this_machine();
        self.host == me.0 && !self.boot_id.is_empty() && self.boot_id == me.1 && !process_alive(self.pid)
    }

    /// One line for messages: who, where, since when, and when it lapses.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let ago = (now - self.renewed_at).num_seconds().max(0);
        let left = (self.expires_at() - now).num_seconds().max(0);
        format!(
            "`{}` (pid {} on {}) holds it since {}; renewed {ago} s ago, it lapses in {left} s unless renewed",
            crate::error::clean(&self.command),
            self.pid,
            crate::error::clean(&self.host),
            self.acquired_at.format("%Y-%m-%dT%H:%M:%SZ"),
        )
    }
}

/// How to acquire.
#[derive(Debug, Clone, Copy)]
pub struct LeaseOptions {
    /// Wait for the holder to release (or die) instead of failing with [`LakeError::Leased`].
    pub wait: bool,
    pub ttl: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { wait: false, ttl: DEFAULT_TTL }
    }
}

/// A held lease; renewed in the background until [`Lease::release`] (or dropped, which stops
/// renewing: the lease then lapses after its time to live).
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    name: String,
    holder: Holder,
    lost: CancellationToken,
    stop: CancellationToken,
    renewer: Option<tokio::task::JoinHandle<u64>>,
    shown: String,
}

impl Lake {
    /// Takes the lake's lease `name` for `command`, waiting for its holder if `options.wait`
    /// (`on_wait` sees each holder waited on, once).
    pub async fn lease(&self, name: &str, command: &str, options: LeaseOptions, on_wait: impl FnMut(&Holder)) -> Result<Lease> {
        acquire(self.store(), &format!("{}{}", self.url(), folder(name)), name, command, options, on_wait).await
    }
}

fn folder(name: &str) -> String {
    format!("_prism/leases/{name}/")
}

fn generation_path(name: &str, generation: u64) -> ObjectPath {
    ObjectPath::from(format!("{}{generation:020}.json", folder(name)))
}

/// The newest generation and its holder (None: never leased). The holder's file is `None` when
/// unreadable (a file not Prism's, or one being deleted): it is treated as expired.
async fn newest(store: &dyn ObjectStore, name: &str, shown: &str) -> Result<Option<(u64, Option<Holder>, DateTime<Utc>)>> {
    let prefix = ObjectPath::from(folder(name));
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.map_err(|source| LakeError::Store { context: format!("listing {shown}"), source })?;
    let Some(meta) = listed.into_iter().filter_map(|m| Some((m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok()?, m))).max_by_key(|(g, _)| *g)
    else {
        return Ok(None);
    };
    let (generation, meta) = meta;
    let holder = match store.get(&meta.location).await {
        Ok(got) => got.bytes().await.ok().and_then(|b| serde_json::from_slice::<Holder>(&b).ok()),
        Err(_) => None,
    };
    Ok(Some((generation, holder, meta.last_modified)))
}

/// Writes generation `generation` create-only: false when another process wrote it first.
async fn write(store: &dyn ObjectStore, name: &str, generation: u64, holder: &Holder, shown: &str) -> Result<bool> {
    let body = serde_json::to_vec_pretty(holder).map_err(|source| LakeError::ConfigJson { path: shown.to_owned(), source })?;
    match store.put_opts(&generation_path(name, generation), PutPayload::from(body), PutMode::Create.into()).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(source) => Err(LakeError::Store { context: format!("writing the lease {shown}{generation:020}.json"), source }),
    }
}

/// Deletes generations older than `keep_from` (best effort: a leftover file costs nothing).
async fn forget_before(store: &dyn ObjectStore, name: &str, keep_from: u64) {
    for g in keep_from.saturating_sub(3)..keep_from {
        let _ = store.delete(&generation_path(name, g)).await;
    }
}

async fn acquire(
    store: Arc<dyn ObjectStore>,
    shown: &str,
    name: &str,
    command: &str,
    options: LeaseOptions,
    mut on_wait: impl FnMut(&Holder),
) -> Result<Lease> {
    let (host, boot_id) = this_machine();
    let now = Utc::now();
    let mut holder = Holder {
        id: uuid::Uuid::new_v4().to_string(),
        command: command.to_owned(),
        host,
        boot_id,
        pid: std::process::id(),
        acquired_at: now,
        renewed_at: now,
        ttl_seconds: options.ttl.as_secs().max(1),
        released: false,
    };
    // What this process saw last, and since when (by its own clock): a generation that does
    // not change for a whole time to live has lapsed, whatever the clocks of the machines say.
    let mut seen: Option<(u64, Instant)> = None;
    let mut waited_on: Option<String> = None;
    loop {
        let now = Utc::now();
        let (generation, free) = match newest(store.as_ref(), name, shown).await? {
            None => (0, None),
            Some((g, h, modified)) => {
                let stale_here = seen.is_some_and(|(s, since)| s == g && since.elapsed() > options.ttl);
                if seen.is_none_or(|(s, _)| s != g) {
                    seen = Some((g, Instant::now()));
                }
                match h {
                    None => (g, None),
                    // Lapsed by both clocks that could be ahead: the holder's and the store's.
                    Some(h)
                        if h.released
                            || h.is_dead_here()
                            || stale_here
                            || (h.expires_at() < now && modified + TimeDelta::seconds(h.ttl_seconds as i64) < now) =>
                    {
                        (g, None)
                    }
                    Some(h) => (g, Some(h)),
                }
            }
        };
        match free {
            None => {
                holder.acquired_at = Utc::now();
                holder.renewed_at = holder.acquired_at;
                if write(store.as_ref(), name, generation + 1, &holder, shown).await? {
                    forget_before(store.as_ref(), name, generation + 1).await;
                    return Ok(Lease::start(store, name, holder, generation + 1, options.ttl, shown));
                }
                // Another process took it first: look again.
            }
            Some(h) if !options.wait => {
                return Err(LakeError::Leased { lease: shown.to_owned(), holder: h.describe(now) });
            }
            Some(h) => {
                if waited_on.as_deref() != Some(h.id.as_str()) {
                    on_wait(&h);
                    waited_on = Some(h.id.clone());
                }
                // Looked at again within 5 s (a holder that stops or dies on this machine is
                // replaced that soon; two requests per look keep an idle standby cheap in S3).
                let until_expiry = (h.expires_at() - now).to_std().unwrap_or_default();
                let most = (options.ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(5));
                tokio::time::sleep(until_expiry.clamp(Duration::from_millis(200), most)).await;
            }
        }
    }
}

impl Lease {
    fn start(store: Arc<dyn ObjectStore>, name: &str, holder: Holder, generation: u64, ttl: Duration, shown: &str) -> Lease {
        let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
        let renewer = tokio::spawn(renew(store.clone(), name.to_owned(), holder.clone(), generation, ttl, lost.clone(), stop.clone(), shown.to_owned()));
        Lease { store, name: name.to_owned(), holder, lost, stop, renewer: Some(renewer), shown: shown.to_owned() }
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Cancelled when the lease was lost: another process took it over (this one had not
    /// renewed in time). The holder should stop its work and fail with [`Lease::lost_error`].
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The error to end with after the lease was lost.
    pub fn lost_error(&self) -> LakeError {
        LakeError::LeaseLost { lease: self.shown.clone() }
    }

    /// Stops renewing and marks the lease released, so the next process takes it at once.
    pub async fn release(mut self) -> Result<()> {
        self.stop.cancel();
        let Some(renewer) = self.renewer.take() else { return Ok(()) };
        let generation = renewer.await.map_err(|source| LakeError::Task { context: format!("renewing the lease {}", self.shown), source })?;
        if self.lost.is_cancelled() {
            return Ok(());
        }
        let mut done = self.holder.clone();
        done.renewed_at = Utc::now();
        done.released = true;
        if write(self.store.as_ref(), &self.name, generation + 1, &done, &self.shown).await? {
            forget_before(self.store.as_ref(), &self.name, generation + 1).await;
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

/// Renews every third of `ttl` until `stop`; returns the last generation written. Cancels
/// `lost` when another process wrote the next generation, or when renewals failed for a whole
/// time to live (others may have taken it over).
#[allow(clippy::too_many_arguments)]
async fn renew(
    store: Arc<dyn ObjectStore>,
    name: String,
    mut holder: Holder,
    mut generation: u64,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
    shown: String,
) -> u64 {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return generation,
            () = tokio::time::sleep(ttl / 3) => {}
        }
        holder.renewed_at = Utc::now();
        match write(store.as_ref(), &name, generation + 1, &holder, &shown).await {
            Ok(true) => {
                generation += 1;
                renewed = Instant::now();
                forget_before(store.as_ref(), &name, generation).await;
            }
            Ok(false) => {
                lost.cancel();
                return generation;
            }
            // A store that fails now and then: retried at the next tick, until the lease lapses.
            Err(_) if renewed.elapsed() < ttl => {}
            Err(_) => {
                lost.cancel();
                return generation;
            }
        }
    }
}

/// This machine's host name and boot ID (empty where unknown).
fn this_machine() -> (String, String) {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default();
    (host, boot_id)
}

/// Whether process `pid` runs (or may run: anything but "no such process" counts as alive).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn options(ttl_ms: u64, wait: bool) -> LeaseOptions {
        LeaseOptions { wait, ttl: Duration::from_millis(ttl_ms) }
    }

    async fn take(store: &Arc<dyn ObjectStore>, o: LeaseOptions) -> Result<Lease> {
        acquire(store.clone(), "memory:///lake/_prism/leases/x/", "x", "test", o, |_| {}).await
    }

    #[tokio::test]
    async fn a_second_holder_is_refused_then_takes_over_once_released() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let first = take(&store, options(60_000, false)).await.unwrap();
        let refused = take(&store, options(60_000, false)).await.err().unwrap().to_string();
        assert!(refused.contains("`test` (pid ") && refused.contains("lapses in "), "{refused}");
        first.release().await.unwrap();
        let second = take(&store, options(60_000, false)).await.unwrap();
        assert!(!second.is_lost());
        second.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_holder_stops_renewing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // A holder that vanished without releasing (its renewer gone, as after a crash of a
        // process on another machine: this one is alive, so only the time to live frees it).
        let gone = take(&store, options(600, false)).await.unwrap();
        drop(gone);
        let mut waited = 0;
        let started = Instant::now();
        let next = acquire(store.clone(), "memory:///x", "x", "test", options(600, true), |_| waited += 1).await.unwrap();
        assert_eq!(waited, 1);
        assert!(started.elapsed() >= Duration::from_millis(300), "taken over before the lease lapsed");
        next.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_renewing_holder_keeps_it_and_a_taken_over_one_learns_it_lost() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let holder = take(&store, options(300, false)).await.unwrap();
        // Renewed across several times to live: still held.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(take(&store, options(300, false)).await.is_err());
        assert!(!holder.is_lost());
        // Someone writes the next generation (as a process that judged it lapsed would).
        let (g, h, _) = newest(store.as_ref(), "x", "x").await.unwrap().unwrap();
        assert!(g >= 3, "renewed {g} times");
        assert!(write(store.as_ref(), "x", g + 1, &h.unwrap(), "x").await.unwrap());
        tokio::time::timeout(Duration::from_secs(2), holder.lost().cancelled()).await.expect("the holder learns it lost the lease");
        // Old generations are deleted as it goes.
        let files: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert!(files.len() <= 5, "{}", files.len());
    }

    #[test]
    fn a_dead_process_here_is_known_dead() {
        let (host, boot_id) = this_machine();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let now = Utc::now();
        let h = Holder { id: "a".into(), command: "c".into(), host, boot_id, pid, acquired_at: now, renewed_at: now, ttl_seconds: 60, released: false };
        assert!(h.is_dead_here() || h.boot_id.is_empty());
        assert!(!Holder { pid: std::process::id(), ..h.clone() }.is_dead_here());
        assert!(!Holder { host: "elsewhere".into(), ..h }.is_dead_here());
    }
}
