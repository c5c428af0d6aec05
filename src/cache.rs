//! The registry persisted to a file (`[cache]`), so a node that restarts while etcd is away
//! still routes: written atomically at most once a second after a change, read at start, and
//! served when etcd refuses the first list, or does not answer it within `[etcd] dial_timeout`.
//!
//! The file is JSON: `{"version": 1, "written_at": <unix seconds>, "cluster_id": …,
//! "revision": …, "services": {"<name>": [{"id": "…", "value": "<registry value>"}]}}`. Each
//! value is what etcd held, re-encoded in its own format, and is parsed again when read.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use tokio_util::sync::CancellationToken;
use toml::Spanned;
use tracing::{debug, info, warn};

use crate::discovery::{Fallback, Freshness};
use crate::etcd::Outage;
use crate::field::{duration, FieldResult, HumanDuration, Key};
use crate::instance::Instance;
use crate::registry::parse_value;
use crate::snapshot::{Snapshot, Store};

/// The file format's version; a file of another version is ignored.
const VERSION: u32 = 1;

/// How often the store is checked for changes: at most one write a second, however fast the
/// registry churns.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// A cache older than a minute is worth little, one older than a year is a forgotten file.
const MAX_AGE: RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 3600);

/// The `[cache]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Where the registry is persisted.
    pub path: PathBuf,
    /// An older file is not used.
    pub max_age: Duration,
}

/// The `[cache]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    path: Spanned<String>,
    max_age: Option<Spanned<HumanDuration>>,
}

impl RawCache {
    /// The settings; `key` is `cache`.
    pub(crate) fn validate(self, key: &Key) -> FieldResult<CacheConfig> {
        let path = self.path.get_ref();
        if path.is_empty() || path.ends_with('/') {
            return Err(key.at(
                "path",
                &self.path,
                format!("path {path:?} must name a file, like \"/var/lib/cairn/registry.json\""),
            ));
        }
        Ok(CacheConfig {
            path: PathBuf::from(path),
            max_age: duration(
                self.max_age.as_ref(),
                &key.field("max_age"),
                MAX_AGE,
                Duration::from_secs(24 * 3600),
            )?,
        })
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file as read.
#[derive(Deserialize)]
struct File {
    version: u32,
    written_at: u64,
    cluster_id: u64,
    revision: i64,
    services: BTreeMap<String, Vec<Entry>>,
}

/// One instance in the file.
#[derive(Deserialize, Serialize)]
struct Entry {
    id: String,
    value: String,
}

/// Reads the cache at `config.path` as a fallback served after `after`. A missing file is
/// normal (first start); an unreadable, corrupt, foreign or too old one is one warning and
/// ignored. Values that no longer parse are skipped.
pub fn load(config: &CacheConfig, after: Duration) -> Option<Fallback> {
    let path = config.path.display();
    let bytes = match std::fs::read(&config.path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(%path, "no cache file yet; it is written once etcd is listed");
            return None;
        }
        Err(e) => {
            warn!(%path, error = %e, "cannot read the cache file, ignoring it");
            return None;
        }
    };
    let file: File = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            warn!(%path, error = %e, "the cache file is corrupt, ignoring it");
            return None;
        }
    };
    if file.version != VERSION {
        warn!(%path, version = file.version, "the cache file has another format version, ignoring it");
        return None;
    }
    let age = Duration::from_secs(unix_now().saturating_sub(file.written_at));
    if age > config.max_age {
        warn!(
            %path,
            age = %humantime::format_duration(age),
            max_age = %humantime::format_duration(config.max_age),
            "the cache file is older than max_age, ignoring it"
        );
        return None;
    }
    let mut instances = Vec::new();
    let mut skipped = 0usize;
    for (service, entries) in file.services {
        for e in entries {
            match parse_value(e.value.as_bytes()) {
                Ok(endpoint) => {
                    instances.push((service.clone(), Arc::new(Instance { id: e.id, endpoint })))
                }
                Err(_) => skipped += 1,
            }
        }
    }
    if skipped > 0 {
        warn!(%path, skipped, "cache entries that no longer parse were skipped");
    }
    debug!(%path, instances = instances.len(), revision = file.revision, "cache file read");
    Some(Fallback {
        after,
        cluster_id: file.cluster_id,
        revision: file.revision,
        instances,
        written_at: file.written_at,
    })
}

/// The store's snapshots, serialized as the file without building a document in memory.
struct View<'a> {
    cluster_id: u64,
    revision: i64,
    written_at: u64,
    snapshots: &'a [(String, Arc<Snapshot>)],
}

/// One service's instances, serialized as entries.
struct Instances<'a>(&'a Snapshot);

impl Serialize for Instances<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for i in self.0.instances() {
            seq.serialize_element(&Entry {
                id: i.id.clone(),
                value: i.endpoint.encode(),
            })?;
        }
        seq.end()
    }
}

/// The services, skipping empty ones.
struct Services<'a>(&'a [(String, Arc<Snapshot>)]);

impl Serialize for Services<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, snapshot) in self.0.iter().filter(|(_, s)| !s.is_empty()) {
            map.serialize_entry(name, &Instances(snapshot))?;
        }
        map.end()
    }
}

impl Serialize for View<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(5))?;
        map.serialize_entry("version", &VERSION)?;
        map.serialize_entry("written_at", &self.written_at)?;
        map.serialize_entry("cluster_id", &self.cluster_id)?;
        map.serialize_entry("revision", &self.revision)?;
        map.serialize_entry("services", &Services(self.snapshots))?;
        map.end()
    }
}

/// Writes `view` to `path` atomically: a temporary file in the same directory, flushed to
/// disk, renamed over the old one, and the directory flushed, so a crash leaves the old file
/// or the new one, never half of one.
fn write(path: &Path, view: &View<'_>) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-cache-")
        .tempfile_in(dir)?;
    {
        let mut out = BufWriter::new(tmp.as_file_mut());
        serde_json::to_writer(&mut out, view)?;
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the store to `config.path` whenever it changed, at most once a second, until
/// `stop`. Writes only what came from etcd (never a cache read back), off the runtime's
/// threads.
pub async fn run(
    config: CacheConfig,
    store: Arc<Store>,
    freshness: Arc<Freshness>,
    stop: CancellationToken,
) {
    let mut written = None;
    let mut outage = Outage::default();
    loop {
        if !crate::shutdown::sleep(&stop, WRITE_EVERY).await {
            return;
        }
        let changes = store.changes();
        if !store.synced() || store.cached_at().is_some() || written == Some(changes) {
            continue;
        }
        let snapshots = store.snapshots();
        let (cluster_id, revision) = (freshness.cluster_id(), store.revision());
        let path = config.path.clone();
        let done = tokio::task::spawn_blocking(move || {
            let view = View {
                cluster_id,
                revision,
                written_at: unix_now(),
                snapshots: &snapshots,
            };
            write(&path, &view)
        })
        .await;
        match done {
            Ok(Ok(())) => {
                outage.recovered("writing the cache file");
                written = Some(changes);
                debug!(path = %config.path.display(), revision, "cache file written");
            }
            Ok(Err(e)) => {
                let what = format!("{}: {e}", config.path.display());
                outage.failed("writing the cache file", &what);
            }
            Err(e) => {
                outage.failed("writing the cache file", &e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Endpoint, Format};

    fn config(dir: &Path) -> CacheConfig {
        CacheConfig {
            path: dir.join("registry.json"),
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_written_store_reads_back_with_every_format_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = Store::new();
        let mut json = Endpoint::new("10.0.0.2:80".parse().unwrap(), Format::Json);
        json.weight = 5;
        json.zone = Some("eu-1a".into());
        json.metadata = serde_json::json!({"version": "1.4.2"});
        store.publish(
            "web",
            vec![
                Instance {
                    id: "a".into(),
                    endpoint: Endpoint::new("10.0.0.1:80".parse().unwrap(), Format::Plain),
                },
                Instance {
                    id: "b".into(),
                    endpoint: json,
                },
            ],
        );
        store.publish("empty", vec![]);
        let snapshots = store.snapshots();
        let view = View {
            cluster_id: 9,
            revision: 42,
            written_at: unix_now(),
            snapshots: &snapshots,
        };
        write(&config.path, &view).unwrap();
        let back = load(&config, Duration::from_secs(5)).expect("the file is read");
        assert_eq!((back.cluster_id, back.revision), (9, 42));
        let got: Vec<(String, Instance)> = back
            .instances
            .into_iter()
            .map(|(s, i)| (s, (*i).clone()))
            .collect();
        let want: Vec<(String, Instance)> = store
            .cell("web")
            .load()
            .instances()
            .iter()
            .map(|i| ("web".to_string(), (**i).clone()))
            .collect();
        assert_eq!(got, want);
        // Nothing but the file is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_corrupt_foreign_and_old_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        assert!(load(&config, Duration::ZERO).is_none(), "missing");
        std::fs::write(&config.path, b"{\"version\": 1, \"writ").unwrap();
        assert!(load(&config, Duration::ZERO).is_none(), "corrupt");
        let file = |version: u32, written_at: u64| {
            format!("{{\"version\":{version},\"written_at\":{written_at},\"cluster_id\":1,\"revision\":2,\"services\":{{\"s\":[{{\"id\":\"a\",\"value\":\"10.0.0.1:80\"}},{{\"id\":\"b\",\"value\":\"garbage\"}}]}}}}")
        };
        std::fs::write(&config.path, file(2, unix_now())).unwrap();
        assert!(load(&config, Duration::ZERO).is_none(), "another version");
        std::fs::write(&config.path, file(1, unix_now() - 7200)).unwrap();
        assert!(load(&config, Duration::ZERO).is_none(), "too old");
        std::fs::write(&config.path, file(1, unix_now() - 60)).unwrap();
        let read = load(&config, Duration::ZERO).expect("a fresh file is used");
        assert_eq!(read.instances.len(), 1, "the garbage value is skipped");
    }
}
