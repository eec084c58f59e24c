//! The spool's report where it is read: a file in the spool's directory (for
//! a person with the volume) and, in a cluster, a key named for the spool in
//! a ConfigMap the operator reads to drain spools a scale-in left behind.

use crate::model::spool_report::SpoolReport;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The report's file in the spool's directory.
pub const FILE: &str = "spool-report.json";

/// How long one write to the API may take; the relay is stopping.
const API_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Marker {
    file: PathBuf,
    api: Option<(Api<ConfigMap>, String, String)>,
}

impl Marker {
    /// `configmap` (NAMESPACE/NAME) and `key` (the spool's name, e.g. the
    /// pod's) together put the report in the API too.
    pub async fn new(data_dir: &Path, configmap: Option<&str>, key: Option<&str>) -> Marker {
        let api = match (configmap, key) {
            (Some(spec), Some(key)) => match spec.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    match Client::try_default().await {
                        Ok(c) => Some((Api::namespaced(c, ns), name.to_owned(), key.to_owned())),
                        Err(e) => {
                            tracing::warn!(error = %e, "no Kubernetes client: the spool report goes to its file only");
                            None
                        }
                    }
                }
                _ => {
                    tracing::warn!(%spec, "--spool-report-configmap: expected NAMESPACE/NAME; the spool report goes to its file only");
                    None
                }
            },
            _ => None,
        };
        Marker {
            file: data_dir.join(FILE),
            api,
        }
    }

    /// Writes the report to its file (atomically, durably) and to the API.
    pub async fn publish(&self, report: &SpoolReport) {
        let text = serde_json::to_string(report).expect("a report is plain data");
        if let Err(e) = write_durably(&self.file, text.as_bytes()) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot write the spool report");
        }
        let Some((api, name, key)) = &self.api else {
            return;
        };
        let patch = serde_json::json!({"data": {key: text}});
        let sent = tokio::time::timeout(
            API_TIMEOUT,
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(configmap = %name, error = %e, "cannot write the spool report to the API")
            }
            Err(_) => {
                tracing::warn!(configmap = %name, "the API did not take the spool report in time")
            }
        }
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The report in a spool's directory, if one was written.
pub fn read(data_dir: &Path) -> Option<SpoolReport> {
    let text = std::fs::read(data_dir.join(FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}
