//! The hosts that share a store: each registers what it offers at start-up and heartbeats;
//! `GET /hangar/v1/hosts` shows them with what their machines use (reference: issue 18).

use super::*;

/// How many machines' hosts [`Hangar::machine_owner`] remembers.
const MACHINE_HOSTS_REMEMBERED: usize = 65_536;

/// How often a host says it is alive.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// A host silent for this long is `unreachable` (three missed heartbeats).
const UNREACHABLE_AFTER_MS: i64 = 3 * HEARTBEAT_INTERVAL.as_millis() as i64;

/// How long `h` has been silent at `now` (ms), if longer than makes it unreachable.
pub(super) fn silence(h: &HostRecord, now: i64) -> Option<i64> {
    let silent = now - h.heartbeat_at;
    (silent > UNREACHABLE_AFTER_MS).then_some(silent)
}

/// What this host offers the cluster.
#[derive(Debug, Clone)]
pub struct HostOffer {
    pub cpus: i64,
    pub memory_mb: i64,
    pub disk_gb: i64,
    pub api_addr: String,
    /// This installation's instance id (`host-instance` in the data dir).
    pub instance: String,
}

/// What a host's machines reserve (those that may run) and how many it has.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpus: i64,
    memory_mb: i64,
    machines: i64,
}

/// A host as `hangar hosts list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostView {
    pub id: String,
    pub region: String,
    pub cpus: i64,
    pub memory_mb: i64,
    pub disk_gb: i64,
    pub api_addr: String,
    /// What the host's machines that are not stopped reserve.
    pub used_cpus: i64,
    pub used_memory_mb: i64,
    pub machines: i64,
    /// Unix milliseconds.
    pub registered_at: i64,
    pub heartbeat_at: i64,
    /// `ok`, or `unreachable` when its heartbeats stopped.
    pub status: &'static str,
    /// This daemon's own host.
    pub this_host: bool,
}

/// Where a request for a machine (or a new one) is served.
#[derive(Debug)]
pub enum Owner {
    /// Here.
    Local,
    /// On another host of the cluster, alive.
    Host(HostRecord),
    /// On another host whose heartbeats stopped this long ago (milliseconds).
    Unreachable(HostRecord, i64),
    /// On a host the store has no record of (its row was removed).
    Unregistered(String),
}

impl Hangar {
    pub fn is_cluster(&self) -> bool {
        self.cluster.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The token other hosts of the cluster present when they forward a request here.
    pub fn cluster_token(&self) -> zeroize::Zeroizing<String> {
        self.secrets.key.cluster_token()
    }

    /// Sets up TLS with the other hosts for this host's API at `ip` (once, at start-up).
    pub fn enable_cluster_tls(&self, ip: std::net::IpAddr) -> anyhow::Result<()> {
        let tls = crate::cluster_tls::ClusterTls::new(self.secrets.key.cluster_ca_seed(), ip)?;
        let _ = self.cluster_tls.set(tls);
        Ok(())
    }

    /// TLS with the other hosts, when this host has it.
    pub fn cluster_tls(&self) -> Option<&crate::cluster_tls::ClusterTls> {
        self.cluster_tls.get()
    }

    fn owner_of(&self, host: Option<HostRecord>) -> Owner {
        match host {
            None => Owner::Local,
            Some(h) if h.id == self.host_id => Owner::Local,
            Some(h) => match silence(&h, now_ms()) {
                Some(silent) => Owner::Unreachable(h, silent),
                None => Owner::Host(h),
            },
        }
    }

    /// Which host serves requests for machine `id` of `app` (here when the machine is unknown,
    /// so that the local answer is the 404). A machine never changes hosts, so its host is
    /// remembered after the first lookup: a request for a machine costs no extra store read.
    pub async fn machine_owner(&self, app: &str, id: &str) -> ServiceResult<Owner> {
        let key = (app.to_string(), id.to_string());
        let known = self
            .machine_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let host = match known {
            Some(host) => host,
            None => {
                let (a, i) = key.clone();
                let found = db(&self.store, move |s| {
                    Ok(s.get_machine(&a, &i)?.map(|m| m.host_id))
                })
                .await?;
                let Some(host) = found else {
                    return Ok(Owner::Local);
                };
                let mut hosts = self.machine_hosts.lock().unwrap_or_else(|e| e.into_inner());
                // A bound, not an eviction policy: lookups are cheap to redo.
                if hosts.len() >= MACHINE_HOSTS_REMEMBERED {
                    hosts.clear();
                }
                hosts.insert(key, host.clone());
                host
            }
        };
        self.owner_by(move |_| Ok(Some(host))).await
    }

    /// Which host serves requests for volume `id` of `app` (here when it is unknown).
    pub async fn volume_owner(&self, app: &str, id: &str) -> ServiceResult<Owner> {
        let (app, id) = (app.to_string(), id.to_string());
        self.owner_by(move |s| Ok(s.get_volume(&app, &id)?.map(|v| v.host_id)))
            .await
    }

    /// The owner of what `host_of` finds (its host id): here when nothing is found or it has
    /// no host.
    async fn owner_by(
        &self,
        host_of: impl FnOnce(&dyn Store) -> hangar_store::Result<Option<String>> + Send + 'static,
    ) -> ServiceResult<Owner> {
        let me = self.host_id.clone();
        let host = db(&self.store, move |s| {
            // This host's own (most requests land where their machine is): no host to read.
            let Some(id) = host_of(s)?.filter(|h| !h.is_empty() && *h != me) else {
                return Ok(None);
            };
            let found = s.list_hosts()?.into_iter().find(|h| h.id == id);
            Ok(Some((id, found)))
        })
        .await?;
        Ok(match host {
            None => Owner::Local,
            Some((id, None)) if id != self.host_id => Owner::Unregistered(id),
            Some((_, found)) => self.owner_of(found),
        })
    }

    /// Which host serves requests for snapshot `id`'s volume (a restore from it goes there).
    pub async fn snapshot_owner(&self, app: &str, id: &str) -> ServiceResult<Owner> {
        let snap = id.to_string();
        let volume = db(&self.store, move |s| s.get_snapshot(&snap)).await?;
        match volume {
            Some(s) => self.volume_owner(app, &s.volume_id).await,
            None => Ok(Owner::Local),
        }
    }

    /// Which host a new machine in `region` goes to: here when it is this host's region, else
    /// the live host of that region with the most CPUs free. `None`: no live host there.
    pub async fn placement(&self, region: &str) -> ServiceResult<Option<Owner>> {
        if region == self.region {
            return Ok(Some(Owner::Local));
        }
        let now = now_ms();
        Ok(self
            .hosts_with_usage()
            .await?
            .into_iter()
            .filter(|(h, _)| {
                h.region == region && silence(h, now).is_none() && !h.api_addr.is_empty()
            })
            .max_by_key(|(h, used)| h.cpus - used.cpus)
            .map(|(h, _)| Owner::Host(h)))
    }

    /// Hosts of the cluster whose heartbeats stopped (none outside cluster mode): their
    /// machines' `host_status` is `unreachable`.
    pub async fn unreachable_hosts(&self) -> ServiceResult<std::collections::HashSet<String>> {
        if !self.is_cluster() {
            return Ok(Default::default());
        }
        let now = now_ms();
        let hosts = db(&self.store, |s| s.list_hosts()).await?;
        Ok(hosts
            .into_iter()
            .filter(|h| silence(h, now).is_some())
            .map(|h| h.id)
            .collect())
    }

    /// Standbys (`config.standbys`) on this host of machines whose host stopped answering are
    /// started, as Fly does when a primary's host fails; the primaries are not touched (their
    /// host may still run them, cut off). Runs with every heartbeat in cluster mode.
    pub async fn start_standbys(&self) -> ServiceResult<()> {
        // After this host lost the store for a while every other host looks silent until they
        // heartbeat again: wait until this host has heartbeated for longer than the silence
        // that counts as unreachable.
        let fresh = self
            .heartbeats_in_a_row
            .load(std::sync::atomic::Ordering::Relaxed)
            > (UNREACHABLE_AFTER_MS / HEARTBEAT_INTERVAL.as_millis() as i64) as u32;
        if !self.is_cluster() || !fresh {
            return Ok(());
        }
        let silent = self.unreachable_hosts().await?;
        if silent.is_empty() {
            return Ok(());
        }
        let all = db(&self.store, |s| s.list_live_machines()).await?;
        let host_of: HashMap<&str, &str> = all
            .iter()
            .map(|m| (m.id.as_str(), m.host_id.as_str()))
            .collect();
        for m in all.iter().filter(|m| m.host_id == self.host_id) {
            if !matches!(m.state, MachineState::Stopped | MachineState::Created) {
                continue;
            }
            let lost = m
                .config
                .standbys
                .iter()
                .flatten()
                .find(|p| host_of.get(p.as_str()).is_some_and(|h| silent.contains(*h)));
            let Some(primary) = lost else { continue };
            tracing::warn!(machine = %m.id, %primary, "starting a standby: its primary's host is unreachable");
            // In its own task: a slow start (an image pull) must not hold up the heartbeat.
            let (this, m) = (self.me.clone(), m.clone());
            tokio::spawn(async move {
                let Some(this) = this.upgrade() else { return };
                if let Err(e) = this
                    .start_internal(&m.app, &m.id, Source::Platform, None)
                    .await
                {
                    tracing::warn!(machine = %m.id, error = %e, "starting a standby failed");
                }
            });
        }
        Ok(())
    }

    /// This host's id (`--host-id`).
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Records this host (and what it offers) in the store.
    pub async fn register_host(&self, offer: HostOffer) -> ServiceResult<()> {
        let now = now_ms();
        // Another installation heartbeating under this id: two hosts were given one id, and
        // would both act as this host's machines' owner.
        let id = self.host_id.clone();
        let existing = db(&self.store, move |s| {
            Ok(s.list_hosts()?.into_iter().find(|h| h.id == id))
        })
        .await?;
        if let Some(h) = existing {
            let silent = now - h.heartbeat_at;
            if !h.instance.is_empty() && h.instance != offer.instance && silence(&h, now).is_none()
            {
                return Err(ServiceError::Conflict(format!(
                    "host id {} is in use by another live daemon (its last heartbeat was {}s \
                     ago): give each host its own --host-id",
                    h.id,
                    silent / 1000
                )));
            }
        }
        let host = HostRecord {
            id: self.host_id.clone(),
            region: self.region.clone(),
            cpus: offer.cpus,
            memory_mb: offer.memory_mb,
            disk_gb: offer.disk_gb,
            api_addr: offer.api_addr,
            instance: offer.instance,
            registered_at: now,
            heartbeat_at: now,
        };
        db(&self.store, move |s| s.register_host(&host)).await
    }

    pub async fn heartbeat(&self) -> ServiceResult<()> {
        use std::sync::atomic::Ordering;
        let id = self.host_id.clone();
        let done = db(&self.store, move |s| s.heartbeat(&id, now_ms())).await;
        match &done {
            Ok(()) => self.heartbeats_in_a_row.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.heartbeats_in_a_row.swap(0, Ordering::Relaxed),
        };
        done
    }

    pub async fn hosts(&self) -> ServiceResult<Vec<HostView>> {
        let now = now_ms();
        Ok(self
            .hosts_with_usage()
            .await?
            .into_iter()
            .map(|(h, used)| HostView {
                status: if silence(&h, now).is_some() {
                    "unreachable"
                } else {
                    "ok"
                },
                this_host: h.id == self.host_id,
                id: h.id,
                region: h.region,
                cpus: h.cpus,
                memory_mb: h.memory_mb,
                disk_gb: h.disk_gb,
                api_addr: h.api_addr,
                used_cpus: used.cpus,
                used_memory_mb: used.memory_mb,
                machines: used.machines,
                registered_at: h.registered_at,
                heartbeat_at: h.heartbeat_at,
            })
            .collect())
    }

    /// Every host with what its machines use, from one read of hosts and machines. Outside
    /// cluster mode every machine is this host's, whatever host name it was made under.
    async fn hosts_with_usage(&self) -> ServiceResult<Vec<(HostRecord, Usage)>> {
        let (hosts, machines) = db(&self.store, |s| {
            Ok((s.list_hosts()?, s.list_live_machines()?))
        })
        .await?;
        let cluster = self.is_cluster();
        Ok(hosts
            .into_iter()
            .map(|h| {
                let mut used = Usage::default();
                let theirs = machines.iter().filter(|m| {
                    if cluster {
                        m.host_id == h.id
                    } else {
                        h.id == self.host_id
                    }
                });
                for m in theirs {
                    used.machines += 1;
                    if matches!(
                        m.state,
                        MachineState::Started
                            | MachineState::Starting
                            | MachineState::Suspended
                            | MachineState::Replacing
                    ) {
                        let spec = m.spec();
                        used.cpus += i64::from(spec.guest.cpus);
                        used.memory_mb += spec.guest.memory_mb as i64;
                    }
                }
                (h, used)
            })
            .collect())
    }
}
