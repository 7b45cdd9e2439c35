//! Finding the Kubernetes API and keeping [`Pods`] current with a
//! list+watch of this node's pods (kube-rs's watcher: it resumes a dropped
//! watch from the last `resourceVersion`, re-lists after 410 Gone, and
//! backs off on errors).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use thiserror::Error;

use super::{PodMeta, Pods};
use crate::telemetry::{Counters, Gauges};

/// `--kubernetes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Use the API when one is configured (in-cluster or KUBECONFIG).
    Auto,
    /// Require it: no API configuration is an error.
    On,
    Off,
}

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("no Kubernetes API configuration (no service account, no KUBECONFIG)")]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("Kubernetes API client")]
    Client(#[source] kube::Error),
}

/// Path of the namespace file of the agent's own service account.
const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// Longest wait between two logged watch errors.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// The API client, or `None` when `--kubernetes auto` finds no cluster.
/// Reading the configuration is quick (files and env); nothing here
/// contacts the API, so an API that is down cannot delay start-up.
pub async fn client(mode: Mode) -> Result<Option<Client>, KubeError> {
    if mode == Mode::Off {
        return Ok(None);
    }
    let cfg = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) if mode == Mode::Auto => {
            tracing::debug!("not on Kubernetes: {e}");
            return Ok(None);
        }
        Err(e) => return Err(KubeError::NoConfig(e)),
    };
    tracing::info!(api = %cfg.cluster_url, "Kubernetes API found");
    Client::try_from(cfg).map(Some).map_err(KubeError::Client)
}

/// `--node-name`, else the host name (what the kubelet registers by
/// default).
pub fn node_name(flag: Option<&str>, host: &str) -> String {
    flag.filter(|n| !n.is_empty())
        .map_or_else(|| host.to_ascii_lowercase(), str::to_owned)
}

/// The agent's own namespace: `POD_NAMESPACE` (downward API), else its
/// service account's.
pub fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| std::fs::read_to_string(SA_NAMESPACE).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Keeps `pods` current until the task is dropped. Never returns an error:
/// the API being down only means spans carry what is already known.
pub async fn run(
    client: Client,
    node: String,
    pods: Arc<Pods>,
    counters: Arc<Counters>,
    gauges: Arc<Gauges>,
) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    // Pods of a list in progress; swapped in whole when it completes, so
    // a pod deleted while the watch was down disappears.
    let mut listing: Option<Vec<PodMeta>> = None;
    let mut last_error_log: Option<Instant> = None;
    tracing::info!(node = %node, "watching this node's pods");
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => {
                Counters::inc(&counters.k8s_lists);
                listing = Some(Vec::new());
            }
            Ok(watcher::Event::InitApply(p)) => {
                if let (Some(l), Some(m)) = (listing.as_mut(), PodMeta::from_pod(&p)) {
                    if l.len() < super::MAX_PODS {
                        l.push(m);
                    } else {
                        Counters::inc(&counters.k8s_pods_dropped);
                    }
                }
            }
            Ok(watcher::Event::InitDone) => {
                let l = listing.take().unwrap_or_default();
                let n = l.len();
                let dropped = pods.replace_all(l);
                Counters::add(&counters.k8s_pods_dropped, dropped as u64);
                tracing::info!(pods = n, "listed this node's pods");
            }
            Ok(watcher::Event::Apply(p)) => {
                if let Some(m) = PodMeta::from_pod(&p) {
                    if !pods.upsert(m) {
                        Counters::inc(&counters.k8s_pods_dropped);
                    }
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    pods.remove(&uid.to_ascii_lowercase());
                }
            }
            Err(e) => {
                Counters::inc(&counters.k8s_watch_errors);
                let now = Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY) {
                    last_error_log = Some(now);
                    tracing::warn!(
                        "Kubernetes pod watch: {e} (retrying; spans keep the metadata already known)"
                    );
                }
            }
        }
        Gauges::set(&gauges.k8s_pods, pods.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_falls_back_to_the_host() {
        assert_eq!(node_name(Some("node-a"), "HOST"), "node-a");
        assert_eq!(node_name(Some(""), "HOST"), "host");
        assert_eq!(node_name(None, "Host"), "host");
    }
}
