//! Following an archive as CloudTrail writes to it (`prism watch`), without listing it again.
//!
//! CloudTrail writes each account and region's files under date folders
//! (`…/CloudTrail/<region>/YYYY/MM/DD/`, and `…/CloudTrail-NetworkActivity/…` for network
//! activity), and new files land in the newest one (or, around
//! midnight and for late deliveries, the one before). So after one full listing, a poll lists
//! each region folder only from the day before its newest date folder on (one `StartAfter`
//! listing per region on S3, a few folder reads on disk): for a year-old organization bucket
//! that is a page per region, not the year. The keys of those last two folders are kept, so a
//! poll reports only keys it has not reported before, and a file that lands late in the older
//! of the two is still found. Region folders are discovered again on every poll (one
//! delimiter listing per account), so new accounts and regions are picked up; a new region is
//! listed in full once.
//!
//! A location without the AWS layout (a folder of exported files) is listed in full on every
//! poll, since nothing says where new files would land.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;

use super::{DateRange, Listing, Location, ObjectRef, PARALLEL_LISTINGS, SourceError, TRAIL_FOLDERS, classify, descend, walk_local_paths};

/// Keys found by a listing: as shown, size (None for a local file: read for new keys only),
/// and how to fetch.
type Found = Vec<(String, Option<u64>, ObjectRef)>;

/// What a follower remembers of one region folder.
#[derive(Debug, Default)]
struct Cursor {
    /// The newest date folder that held a key.
    newest: Option<NaiveDate>,
    /// Every key seen in the date folders from the day before `newest` on, with its folder's
    /// date.
    seen: HashMap<String, NaiveDate>,
    /// `newest` moved since the last prune.
    moved: bool,
}

/// Lists what is new in a location since the last poll. See the module documentation.
pub struct Follower {
    location: Location,
    range: DateRange,
    /// By region folder (as shown: a path, or the URL of the prefix).
    regions: BTreeMap<String, Cursor>,
    /// Keys seen when the location has no AWS layout and is listed in full (and keys outside
    /// the layout in one that has it).
    loose: HashSet<String>,
    /// Whether the location has the AWS layout (region folders to follow).
    layout: bool,
    /// Listing requests (pages on S3 are counted as one) made by polls so far.
    pub listings: u64,
}

impl Follower {
    /// Follows `location`; keys in date folders outside `range` are reported as skipped.
    pub fn new(location: Location, range: DateRange) -> Follower {
        Follower { location, range, regions: BTreeMap::new(), loose: HashSet::new(), layout: false, listings: 0 }
    }

    /// The first, full listing (what `prism ingest` lists), from which polls go on: every key
    /// in it counts as seen.
    pub async fn start(&mut self) -> Result<Listing, SourceError> {
        let listing = self.location.list(&self.range).await?;
        self.layout = self.region_folders().await?.is_some();
        let keys = listing.objects.iter().map(|o| o.location.as_str()).chain(listing.skipped.iter().map(|s| s.location.as_str()));
        for key in keys {
            self.see(key);
        }
        self.prune();
        Ok(listing)
    }

    /// Lists the keys that appeared since the last call (or since [`Follower::start`]).
    pub async fn poll(&mut self) -> Result<Listing, SourceError> {
        let regions = self.region_folders().await?;
        let mut found = Listing::default();
        let Some(regions) = regions else {
            // No AWS layout: the whole location, less what was seen.
            self.listings += 1;
            let all = self.location.list(&self.range).await?;
            for o in all.objects {
                if self.see(&o.location) {
                    found.objects.push(o);
                }
            }
            for s in all.skipped {
                if self.see(&s.location) {
                    found.skipped.push(s);
                }
            }
            return Ok(found);
        };
        self.layout = true;
        let requests: Vec<(String, Option<NaiveDate>)> = regions
            .into_iter()
            .map(|r| {
                let from = self.regions.get(&r).and_then(|c| c.newest).map(day_before);
                (r, from)
            })
            .collect();
        self.listings += requests.len() as u64;
        let location = &self.location;
        let listed: Vec<Result<Found, SourceError>> = futures::stream::iter(requests)
            .map(|(region, from)| async move { list_region(location, &region, from).await })
            .buffer_unordered(PARALLEL_LISTINGS)
            .collect()
            .await;
        // Any failed listing fails the poll before a key is noted as seen, so none is lost.
        let listed: Vec<Found> = listed.into_iter().collect::<Result<_, _>>()?;
        let new: Found = listed.into_iter().flatten().filter(|(display, _, _)| !self.seen(display)).collect();
        let new = sized(new).await.map_err(|e| SourceError::List { location: self.location.to_string(), source: e.into() })?;
        for (display, size, object) in new {
            if self.see(&display) {
                found.push(display, size, object, &self.range);
            }
        }
        self.prune();
        found.objects.sort_by(|a, b| a.delivery_order_key().cmp(&b.delivery_order_key()));
        Ok(found)
    }

    /// How many keys the follower holds (its memory).
    pub fn keys_held(&self) -> usize {
        self.regions.values().map(|c| c.seen.len()).sum::<usize>() + self.loose.len()
    }

    /// Whether a key was seen (most keys a poll lists were): found without parsing its name.
    fn seen(&self, key: &str) -> bool {
        self.loose.contains(key) || region_of(key).and_then(|r| self.regions.get(r)).is_some_and(|c| c.seen.contains_key(key))
    }

    /// Notes a key as seen; false when it was seen before.
    fn see(&mut self, key: &str) -> bool {
        if self.seen(key) {
            return false;
        }
        let date = classify(key).ok().and_then(|i| i.date);
        match (self.layout, region_of(key), date) {
            (true, Some(region), Some(date)) => {
                let cursor = self.regions.entry(region.to_owned()).or_default();
                if cursor.newest < Some(date) {
                    cursor.newest = Some(date);
                    cursor.moved = true;
                }
                cursor.seen.insert(key.to_owned(), date).is_none()
            }
            _ => self.loose.insert(key.to_owned()),
        }
    }

    /// Drops the keys of date folders no poll lists any more (only where `newest` moved).
    fn prune(&mut self) {
        for cursor in self.regions.values_mut().filter(|c| c.moved) {
            cursor.moved = false;
            let Some(keep) = cursor.newest.map(day_before) else { continue };
            cursor.seen.retain(|_, d| *d >= keep);
        }
    }

    /// The region folders of the AWS layout, or None when the location has no such layout.
    async fn region_folders(&self) -> Result<Option<Vec<String>>, SourceError> {
        let list_err = |source: Box<dyn std::error::Error + Send + Sync>| SourceError::List { location: self.location.to_string(), source };
        match &self.location {
            Location::Local(root) => {
                let root = root.clone();
                let found = tokio::task::spawn_blocking(move || local_regions(&root)).await.map_err(|e| list_err(e.into()))?.map_err(|e| list_err(e.into()))?;
                Ok(found.map(|dirs| dirs.into_iter().map(|d| d.display().to_string()).collect()))
            }
            Location::Remote { url, store } => {
                let found = descend(store.as_ref(), url, false).await.map_err(|e| list_err(e.into()))?;
                if found.regions.is_empty() && found.in_full.contains(&None) {
                    return Ok(None);
                }
                let base = url.as_str().trim_end_matches('/');
                Ok(Some(found.regions.iter().map(|r| format!("{base}/{r}")).collect()))
            }
        }
    }
}

/// The day before `d` (`d` itself at the calendar's start: a key can name any date).
fn day_before(d: NaiveDate) -> NaiveDate {
    d.checked_sub_days(chrono::Days::new(1)).unwrap_or(d)
}

/// The region folder of a key in the AWS layout: the key without `/YYYY/MM/DD/<file>`.
fn region_of(key: &str) -> Option<&str> {
    let mut end = key.len();
    for _ in 0..4 {
        end = key[..end].rfind(['/', '\\'])?;
    }
    Some(&key[..end])
}

/// Lists a region folder's keys in date folders from `from` on (all of them without `from`).
async fn list_region(location: &Location, region: &str, from: Option<NaiveDate>) -> Result<Found, SourceError> {
    let list_err = |source: Box<dyn std::error::Error + Send + Sync>| SourceError::List { location: region.to_owned(), source };
    match location {
        Location::Local(_) => {
            let dir = PathBuf::from(region);
            let found =
                tokio::task::spawn_blocking(move || local_days_from(&dir, from)).await.map_err(|e| list_err(e.into()))?.map_err(|e| list_err(e.into()))?;
            Ok(found.into_iter().map(|p| (p.display().to_string(), None, ObjectRef::Local(p))).collect())
        }
        Location::Remote { url, store } => {
            let base = url.as_str().trim_end_matches('/');
            let prefix = ObjectPath::from(region.strip_prefix(base).unwrap_or(region).trim_start_matches('/'));
            let objects: Vec<object_store::ObjectMeta> = match from {
                // `StartAfter` the date folder's own name: its keys (`…/DD/<file>`) and every
                // later folder's sort after it, every earlier folder's before.
                Some(d) => {
                    let offset = prefix.clone().join(d.format("%Y").to_string()).join(d.format("%m").to_string()).join(d.format("%d").to_string());
                    store.list_with_offset(Some(&prefix), &offset).try_collect().await
                }
                None => store.list(Some(&prefix)).try_collect().await,
            }
            .map_err(|e| list_err(e.into()))?;
            Ok(objects
                .into_iter()
                .map(|m| (format!("{base}/{}", m.location), Some(m.size), ObjectRef::Remote { store: store.clone(), path: m.location }))
                .collect())
        }
    }
}

/// The keys with their sizes: local files are read now (a file gone since its folder was read
/// keeps size 0, and its reader reports it).
async fn sized(keys: Found) -> Result<Vec<(String, u64, ObjectRef)>, tokio::task::JoinError> {
    if keys.iter().all(|k| k.1.is_some()) {
        return Ok(keys.into_iter().map(|(d, size, o)| (d, size.unwrap_or(0), o)).collect());
    }
    let stat = move || {
        keys.into_iter()
            .map(|(display, size, object)| {
                let size = match (&object, size) {
                    (_, Some(s)) => s,
                    (ObjectRef::Local(p), None) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                    (ObjectRef::Remote { .. }, None) => 0,
                };
                (display, size, object)
            })
            .collect()
    };
    // Blocking file-system calls stay off the runtime's workers.
    tokio::task::spawn_blocking(stat).await
}

/// `<root>[/AWSLogs]/[o-…/]<account>/<event folder>/<region>` folders, or None when `root` has
/// no `AWSLogs` folder (and is not one).
fn local_regions(root: &Path) -> std::io::Result<Option<Vec<PathBuf>>> {
    let logs = if root.file_name().is_some_and(|n| n == "AWSLogs") {
        root.to_path_buf()
    } else if root.join("AWSLogs").is_dir() {
        root.join("AWSLogs")
    } else {
        return Ok(None);
    };
    let mut accounts = Vec::new();
    for dir in subdirs(&logs)? {
        if dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("o-")) {
            accounts.extend(subdirs(&dir)?);
        } else {
            accounts.push(dir);
        }
    }
    let mut regions = Vec::new();
    for account in accounts {
        for folder in TRAIL_FOLDERS {
            let trail = account.join(folder);
            if trail.is_dir() {
                regions.extend(subdirs(&trail)?);
            }
        }
    }
    Ok(Some(regions))
}

/// The folders in `dir`, sorted (symlinked folders are not followed, as in [`walk_local`]).
fn subdirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The files of a region folder's date folders from `from` on: only the year, month and day
/// folders that can hold them are read.
fn local_days_from(region: &Path, from: Option<NaiveDate>) -> std::io::Result<Vec<PathBuf>> {
    let Some(from) = from else {
        return if region.is_dir() { walk_local_paths(region) } else { Ok(Vec::new()) };
    };
    let number = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok());
    let mut out = Vec::new();
    if !region.is_dir() {
        return Ok(out);
    }
    for year in subdirs(region)? {
        let Some(y) = number(&year) else {
            out.extend(walk_local_paths(&year)?); // not a date folder: listed as a whole
            continue;
        };
        if (y as i32) < from.year() {
            continue;
        }
        for month in subdirs(&year)? {
            let Some(m) = number(&month) else {
                out.extend(walk_local_paths(&month)?);
                continue;
            };
            if (y as i32, m) < (from.year(), from.month()) {
                continue;
            }
            for day in subdirs(&month)? {
                match number(&day) {
                    Some(d) if (y as i32, m, d) < (from.year(), from.month(), from.day()) => {}
                    _ => out.extend(walk_local_paths(&day)?),
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"{\"Records\":[]}").unwrap();
    }

    fn key(region: &str, day: &str, name: &str) -> String {
        format!("AWSLogs/111122223333/CloudTrail/{region}/{day}/111122223333_CloudTrail_{region}_{name}.json.gz")
    }

    fn names(l: &Listing) -> Vec<String> {
        l.objects.iter().map(|o| o.location.rsplit('/').next().unwrap().to_owned()).collect()
    }

    #[tokio::test]
    async fn polls_report_each_new_key_once_and_find_new_regions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, &key("eu-west-1", "2026/01/01", "20260101T0005Z_a"));
        write(root, &key("eu-west-1", "2026/01/02", "20260102T0005Z_a"));
        let mut f = Follower::new(Location::parse(root.to_str().unwrap()).unwrap(), DateRange::default());
        assert_eq!(f.start().await.unwrap().objects.len(), 2);
        assert!(f.poll().await.unwrap().objects.is_empty());
        // A late file in the day before the newest, a file in a new day, and a new region.
        write(root, &key("eu-west-1", "2026/01/01", "20260101T2355Z_b"));
        write(root, &key("eu-west-1", "2026/01/03", "20260103T0005Z_a"));
        write(root, &key("us-east-1", "2026/01/03", "20260103T0005Z_a"));
        let new = f.poll().await.unwrap();
        assert_eq!(
            names(&new),
            [
                "111122223333_CloudTrail_eu-west-1_20260101T2355Z_b.json.gz",
                "111122223333_CloudTrail_eu-west-1_20260103T0005Z_a.json.gz",
                "111122223333_CloudTrail_us-east-1_20260103T0005Z_a.json.gz"
            ]
        );
        assert!(f.poll().await.unwrap().objects.is_empty());
        // Network-activity events have a folder of their own beside CloudTrail/.
        let network = key("us-east-1", "2026/01/03", "20260103T0010Z_n").replace("/CloudTrail/", "/CloudTrail-NetworkActivity/");
        write(root, &network);
        assert_eq!(f.poll().await.unwrap().objects.iter().map(|o| o.location.ends_with(&network)).collect::<Vec<_>>(), [true]);
        assert!(f.poll().await.unwrap().objects.is_empty());
        // Only the last two date folders' keys are held.
        assert_eq!(f.keys_held(), 4);
        // A key at the calendar's first day neither panics nor hides the others.
        write(root, &format!("AWSLogs/111122223333/CloudTrail/eu-west-1/{}/f.json", NaiveDate::MIN.format("%Y/%m/%d")));
        f.poll().await.unwrap();
    }

    #[test]
    fn date_folders_before_the_window_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let region = dir.path().join("r");
        for day in ["2025/12/31", "2026/01/01", "2026/01/02", "2026/02/01"] {
            write(&region, &format!("{day}/f.json"));
        }
        let from = NaiveDate::from_ymd_opt(2026, 1, 2);
        let found: Vec<String> = local_days_from(&region, from).unwrap().into_iter().map(|p| p.strip_prefix(&region).unwrap().display().to_string()).collect();
        assert_eq!(found, ["2026/01/02/f.json", "2026/02/01/f.json"]);
        assert_eq!(region_of("s3://b/AWSLogs/1/CloudTrail/r/2026/01/02/f.json"), Some("s3://b/AWSLogs/1/CloudTrail/r"));
        assert_eq!(region_of("f.json"), None);
    }
}
