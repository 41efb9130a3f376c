//! Byte-range reads of a local table's files on the calling thread.
//!
//! object_store's `LocalFileSystem` runs every read on tokio's blocking pool, so each footer
//! and each row group's column chunks cost a hand-off to another thread and a wake-up back:
//! on a day lake of about a hundred files, a one-column scan spent more time in futex calls
//! and scheduling than in decoding. A lake's files are read in ranges of a few hundred
//! kilobytes from the page cache, which `pread` answers in microseconds, so [`LocalReads`]
//! reads ranges where the scan asks for them and leaves everything else (listing, writing,
//! whole-object reads) to the wrapped store. A request of more than [`INLINE_BYTES`] also goes
//! to the wrapped store: read from a cold disk, it could hold a runtime thread for long.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result,
};
use url::Url;

/// Requests larger than this are left to the wrapped store's blocking pool.
pub(crate) const INLINE_BYTES: u64 = 8 << 20;

/// A store whose range reads go straight to the files under `root`.
#[derive(Debug)]
pub(crate) struct LocalReads {
    inner: Arc<dyn ObjectStore>,
    /// The directory the wrapped store is rooted at, as a `file://` URL ending in `/`.
    root: Url,
}

impl LocalReads {
    /// `store` (rooted at `table`) with inline range reads when `table` is a local folder;
    /// `store` itself otherwise.
    pub(crate) fn wrap(table: &Url, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        if table.scheme() != "file" || table.to_file_path().is_err() {
            return store;
        }
        let mut root = table.clone();
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        Arc::new(LocalReads { inner: store, root })
    }

    /// The file of `location`: the root URL extended by the path's parts, as `LocalFileSystem`
    /// maps a path under its root. An object-store path has no `.` or `..` part, so it stays
    /// under the root.
    fn file(&self, location: &Path) -> Result<(File, std::path::PathBuf)> {
        let mut url = self.root.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(location.parts());
        }
        let path = url.to_file_path().map_err(|()| generic(format!("{location}: not a local file path")))?;
        match File::open(&path) {
            Ok(file) => Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(object_store::Error::NotFound { path: path.display().to_string(), source: Box::new(e) }),
            Err(e) => Err(generic(format!("{}: {e}", path.display()))),
        }
    }
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic { store: "LocalReads", source: message.into() }
}

/// `range` of `file`, all of it or an error.
fn read_range(file: &File, path: &std::path::Path, range: Range<u64>) -> Result<Bytes> {
    let len = usize::try_from(range.end.saturating_sub(range.start)).map_err(|_| generic(format!("{}: range {range:?} too large", path.display())))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, range.start).map_err(|e| generic(format!("{}: reading bytes {range:?}: {e}", path.display())))?;
    Ok(buf.into())
}

impl fmt::Display for LocalReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalReads({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for LocalReads {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    /// A plain range read (no conditions, no version) is answered here; anything else by the
    /// wrapped store.
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        let Some(range) = options.range.clone().filter(|_| plain) else { return self.inner.get_opts(location, options).await };
        let (file, path) = self.file(location)?;
        let meta = file.metadata().map_err(|e| generic(format!("{}: {e}", path.display())))?;
        let range = range.as_range(meta.len()).map_err(|e| generic(format!("{}: {e}", path.display())))?;
        if range.end.saturating_sub(range.start) > INLINE_BYTES {
            return self.inner.get_opts(location, options).await;
        }
        let bytes = read_range(&file, &path, range.clone())?;
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: meta.modified().map(chrono::DateTime::from).unwrap_or_default(),
            size: meta.len(),
            e_tag: None,
            version: None,
        };
        let payload = GetResultPayload::Stream(Box::pin(futures::stream::once(async move { Ok(bytes) })));
        Ok(GetResult { payload, meta, range, attributes: Default::default() })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum::<u64>() > INLINE_BYTES {
            return self.inner.get_ranges(location, ranges).await;
        }
        let (file, path) = self.file(location)?;
        ranges.iter().map(|r| read_range(&file, &path, r.clone())).collect()
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use object_store::local::LocalFileSystem;
    use object_store::{GetRange, ObjectStoreExt};

    /// Range reads through the wrapper return what `LocalFileSystem` returns (bounded, offset
    /// and suffix ranges, several at once), and a missing file is `NotFound`.
    #[tokio::test]
    async fn range_reads_match_the_local_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("awsregion=us-east-1")).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("awsregion=us-east-1/part 1.parquet"), &data).unwrap();
        let root = Url::from_directory_path(dir.path()).unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let wrapped = LocalReads::wrap(&root, local.clone());
        assert!(wrapped.to_string().starts_with("LocalReads"));
        let path = Path::from("awsregion=us-east-1/part 1.parquet");
        for range in [GetRange::Bounded(10..20), GetRange::Offset(9_990), GetRange::Suffix(8), GetRange::Bounded(0..10_000)] {
            let options = || GetOptions { range: Some(range.clone()), ..Default::default() };
            let ours = wrapped.get_opts(&path, options()).await.unwrap();
            let theirs = local.get_opts(&path, options()).await.unwrap();
            assert_eq!((ours.range.clone(), ours.meta.size), (theirs.range.clone(), theirs.meta.size), "{range:?}");
            assert_eq!(ours.bytes().await.unwrap(), theirs.bytes().await.unwrap(), "{range:?}");
        }
        let big = INLINE_BYTES as usize + 10;
        std::fs::write(dir.path().join("big"), vec![7u8; big]).unwrap();
        let halves = [0..big as u64 / 2, big as u64 / 2..big as u64];
        let read = wrapped.get_ranges(&Path::from("big"), &halves).await.unwrap();
        assert_eq!(read.iter().map(Bytes::len).sum::<usize>(), big, "a large read goes to the wrapped store");
        let ranges = [0..4, 100..1_000, 9_000..10_000];
        assert_eq!(wrapped.get_ranges(&path, &ranges).await.unwrap(), local.get_ranges(&path, &ranges).await.unwrap());
        assert!(wrapped.get_ranges(&path, &[9_000..10_001, 0..1]).await.is_err(), "a range past the end is an error, not short");
        let missing = wrapped.get_range(&Path::from("nope.parquet"), 0..4).await.unwrap_err();
        assert!(matches!(missing, object_store::Error::NotFound { .. }), "{missing}");
        // Whole-object reads and listing go to the wrapped store.
        assert_eq!(wrapped.get(&path).await.unwrap().bytes().await.unwrap(), Bytes::from(data));
        assert_eq!(wrapped.list_with_delimiter(None).await.unwrap().common_prefixes.len(), 1);
        assert!(wrapped.get_range(&Path::from("big"), 0..big as u64).await.unwrap().iter().all(|&b| b == 7));
        // Other stores are not wrapped.
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        assert!(Arc::ptr_eq(&LocalReads::wrap(&Url::parse("s3://bucket/lake/events").unwrap(), memory.clone()), &memory));
    }
}
