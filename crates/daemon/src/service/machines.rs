//! Machines as records: create, update (a new version), get, list, events, versions, images.

use super::*;

impl Hangar {
    /// Image references and digests of every machine that is not destroyed.
    /// Every image reference or digest a live machine uses, with that machine (`app/id`).
    pub async fn image_refs_in_use(&self) -> ServiceResult<Vec<(String, String)>> {
        let machines = self.live_machines().await?;
        let mut refs = Vec::new();
        for m in machines {
            let user = format!("{}/{}", m.app, m.id);
            let mut add = |r: String| refs.push((r, user.clone()));
            if let Some(i) = m.config.image.clone().filter(|i| !i.is_empty()) {
                add(i);
            }
            for c in m.config.containers.iter().flatten() {
                add(c.image.clone());
            }
            if let Some(r) = m.image_ref.as_ref().filter(|r| !r.digest.is_empty()) {
                add(r.digest.clone());
            }
            for digest in m.image_digests.values() {
                add(digest.clone());
            }
        }
        Ok(refs)
    }

    /// A machine that is not destroyed; a destroyed one is `machine not found`.
    pub async fn get_machine(
        &self,
        app: &str,
        id: &str,
        include_deleted: bool,
    ) -> ServiceResult<MachineRecord> {
        let m = self.load(app, id).await?;
        if m.state == MachineState::Destroyed && !include_deleted {
            return Err(ServiceError::machine_not_found());
        }
        Ok(m)
    }

    pub(super) async fn list_machine_records(
        &self,
        app: &str,
        include_deleted: bool,
    ) -> ServiceResult<Vec<MachineRecord>> {
        let a = app.to_string();
        db(&self.store, move |s| s.list_machines(&a, include_deleted)).await
    }

    pub async fn list_machines(
        &self,
        app: &str,
        filter: ListFilter,
    ) -> ServiceResult<Vec<MachineRecord>> {
        self.get_app(app).await?;
        let all = self
            .list_machine_records(app, filter.include_deleted)
            .await?;
        Ok(all
            .into_iter()
            .filter(|m| filter.region.as_deref().is_none_or(|r| m.region == r))
            .filter(|m| filter.states.as_ref().is_none_or(|s| s.contains(&m.state)))
            .filter(|m| {
                filter.metadata.iter().all(|(k, v)| {
                    m.config
                        .metadata
                        .as_ref()
                        .and_then(|md| md.get(k))
                        .is_some_and(|mv| mv == v)
                })
            })
            .collect())
    }

    pub async fn events(&self, machine_id: &str, limit: usize) -> ServiceResult<Vec<EventRecord>> {
        let id = machine_id.to_string();
        db(&self.store, move |s| s.list_events(&id, limit)).await
    }

    pub async fn versions(
        &self,
        app: &str,
        id: &str,
    ) -> ServiceResult<Vec<hangar_store::VersionRecord>> {
        let m = self.get_machine(app, id, false).await?;
        let mut versions = db(&self.store, move |s| s.list_versions(&m.id)).await?;
        versions.reverse();
        Ok(versions)
    }

    pub async fn create_machine(
        &self,
        app: &str,
        req: CreateMachineRequest,
    ) -> ServiceResult<(MachineRecord, Option<String>)> {
        // Looked up first so that unknown names never get a lock entry; again under the lock,
        // which a deletion may have waited for.
        self.get_app(app).await?;
        let lock = self.app_lock(app);
        let _shared = lock.read().await;
        let app_rec = self.get_app(app).await?;
        let mut config = req.config;
        validate_config(&mut config).map_err(|e| ServiceError::bad_request(e.to_string()))?;
        check_supported(&config)?;
        check_request_fields(req.lsvd)?;
        self.check_edge_ports(app, &config)?;
        self.check_min_secrets_version(app, req.min_secrets_version)
            .await?;
        self.check_secret_references(app, &config).await?;
        if let Some(name) = &req.name {
            ids::check_machine_name(name).map_err(ServiceError::bad_request)?;
        }
        let region = match req.region.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => {
                check_region(r)?;
                r.to_string()
            }
            None => self.region.clone(),
        };
        let lease_ttl = req.lease_ttl.map(check_lease_ttl).transpose()?;
        let mut image_digests = Default::default();
        let id = ids::new_machine_id();
        if !req.skip_launch {
            self.runtime.preflight(&config)?;
            self.check_fits(&id, &config)?;
            image_digests = self.runtime.fetch_images(&config).await?;
        }
        let now = now_ms();
        let instance_id = ids::new_ulid();
        let mut m = MachineRecord {
            id: id.clone(),
            app: app.to_string(),
            name: req.name.clone().unwrap_or_else(ids::new_machine_name),
            state: MachineState::Created,
            region,
            instance_id: instance_id.clone(),
            private_ip: String::new(),
            private_ipv4: String::new(),
            skip_secrets: req.skip_secrets,
            created_at: now,
            updated_at: now,
            cordoned: req.skip_service_registration,
            image_ref: image_ref(&config),
            image_digests,
            config,
            row_version: 0,
            host_id: self.host_id.clone(),
        };
        let lease = lease_ttl.map(|ttl| LeaseRecord {
            machine_id: id.clone(),
            nonce: ids::new_nonce(),
            expires_at: now_secs() + ttl,
            owner: LEASE_OWNER.to_string(),
            description: String::new(),
            version: instance_id.clone(),
        });
        self.refresh_image_ref(&mut m).await;
        // The volume is bound before the machine exists, so two creates cannot both take it.
        self.attach_volumes(app, &m.id, &m.config).await?;
        let event = Self::event(&m, "launch", MachineState::Created, Source::User, None);
        // A generated name can collide; try a few before giving up.
        let mut attempts = 0;
        loop {
            let (mut rec, ev, l) = (m.clone(), event.clone(), lease.clone());
            let (app_rec, host) = (app_rec.clone(), self.net_host);
            // Addresses are picked and inserted in one go, again if another create took them.
            let inserted = db(&self.store, move |s| {
                let mut tries = 0;
                loop {
                    let (v6, v4) = match network::allocate(s, &app_rec, host) {
                        Ok(a) => a,
                        Err(e) => return Ok(Err(e)),
                    };
                    (rec.private_ip, rec.private_ipv4) = (v6, v4);
                    match s.insert_machine_unsynced(&rec, &ev, l.as_ref()) {
                        Err(hangar_store::StoreError::AddressTaken(_)) if tries < 5 => tries += 1,
                        Err(e) => return Err(e),
                        Ok(()) => return Ok(Ok((rec.private_ip, rec.private_ipv4))),
                    }
                }
            })
            .await
            .and_then(|r| r);
            match inserted {
                Ok((v6, v4)) => {
                    (m.private_ip, m.private_ipv4) = (v6, v4);
                    break;
                }
                Err(ServiceError::NameTaken(_)) if req.name.is_none() && attempts < 5 => {
                    attempts += 1;
                    m.name = ids::new_machine_name();
                }
                Err(e) => {
                    self.detach_volumes(&m.id, &m.config).await;
                    return Err(e);
                }
            }
        }
        self.notify(&m, Some(event.id.clone()));
        if !req.skip_launch {
            // Boot in the background, as Fly does: the response says `created`. The boot
            // starts while the insert reaches the disk (the sync below, ~1 ms here); the
            // answer waits for it. Were the host to lose power before, the machine would be
            // unknown at the next start and its leftovers swept, and nobody was told it exists.
            let this = self.me.clone();
            let (app, id) = (m.app.clone(), m.id.clone());
            tokio::spawn(async move {
                if let Some(this) = this.upgrade() {
                    if let Err(e) = this.start_internal(&app, &id, Source::Platform, None).await {
                        tracing::warn!(machine = %id, error = %e, "launch failed");
                    }
                }
            });
        }
        db(&self.store, |s| s.sync()).await?;
        Ok((m, lease.map(|l| l.nonce)))
    }

    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: CreateMachineRequest,
        nonce: Option<&str>,
    ) -> ServiceResult<MachineRecord> {
        let mut config = req.config;
        validate_config(&mut config).map_err(|e| ServiceError::bad_request(e.to_string()))?;
        check_supported(&config)?;
        check_request_fields(req.lsvd)?;
        self.check_edge_ports(app, &config)?;
        self.check_min_secrets_version(app, req.min_secrets_version)
            .await?;
        self.check_secret_references(app, &config).await?;
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if let Some(v) = req.current_version.as_deref().filter(|v| !v.is_empty()) {
            if v != m.instance_id {
                return Err(ServiceError::precondition(format!(
                    "machine version mismatch: current_version {v} is not the current version {}",
                    m.instance_id
                )));
            }
        }
        if !m.state.can_update() {
            return Err(ServiceError::precondition(format!(
                "unable to update machine while it is {}",
                m.state
            )));
        }
        let old_volumes = mount_volumes(&m.config).unwrap_or_default();
        let new_volumes = mount_volumes(&config).unwrap_or_default();
        if !old_volumes.is_empty() && !new_volumes.is_empty() && old_volumes != new_volumes {
            return Err(ServiceError::bad_request(
                "config.mounts: volumes cannot be swapped by an update (only a mount's path); \
                 destroy the machine to free its volume",
            ));
        }
        // A machine without a volume may get one (Fly accepts attach on update).
        if old_volumes.is_empty() && !new_volumes.is_empty() {
            self.attach_volumes(app, id, &config).await?;
        }
        let released =
            (!old_volumes.is_empty() && new_volumes.is_empty()).then(|| m.config.clone());
        // Request fields besides the config: each takes effect or is refused, never dropped.
        if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty()) {
            if region != m.region {
                return Err(ServiceError::bad_request(format!(
                    "region: a machine cannot move from {} to {region} by an update; create one there",
                    m.region
                )));
            }
        }
        if req.lease_ttl.is_some_and(|t| t != 0) {
            return Err(ServiceError::bad_request(
                "lease_ttl: an update does not take a lease; acquire one with POST …/lease first",
            ));
        }
        let new_name = req.name.clone().filter(|n| !n.is_empty() && *n != m.name);
        if let Some(n) = &new_name {
            ids::check_machine_name(n).map_err(ServiceError::bad_request)?;
        }
        // A suspended machine still holds its (frozen) sandbox: it is stopped like a running one.
        let was_running = matches!(m.state, MachineState::Started | MachineState::Suspended);
        // Fly relaunches only a machine that was running (or failed, which the update may fix);
        // a stopped, suspended or never-started one gets the new version and stays down
        // (flyd: "machine was in a non-started state prior to the update so leaving the new
        // version stopped").
        let launch = !req.skip_launch
            && matches!(
                m.state,
                MachineState::Started | MachineState::Starting | MachineState::Failed
            );
        let mut image_digests = Default::default();
        if launch {
            self.runtime.preflight(&config)?;
            self.check_fits(&m.id, &config)?;
            image_digests = self.runtime.fetch_images(&config).await?;
        }
        let previous = m.state;
        let old_version = m.instance_id.clone();
        // Metadata belongs to the machine, not to a version; an update's config carries its own.
        m.config = config;
        m.image_ref = image_ref(&m.config);
        // A new version runs what its images are now (a skipped launch pins at its first start).
        m.image_digests = image_digests;
        if let Some(n) = new_name {
            m.name = n;
        }
        // As at create: the machine is kept out of service discovery (the proxy) while set.
        m.cordoned = req.skip_service_registration;
        m.skip_secrets = req.skip_secrets;
        m.instance_id = ids::new_ulid();
        m.state = MachineState::Replacing;
        m.updated_at = now_ms();
        let event = Self::event(
            &m,
            "update",
            MachineState::Replacing,
            Source::User,
            Some(json!({ "previous_version": old_version })),
        );
        let event_id = event.id.clone();
        if let Err(e) = self.save(&mut m, true, Some(event), Some(nonce)).await {
            if old_volumes.is_empty() && !new_volumes.is_empty() {
                self.detach_volumes(id, &m.config).await;
            }
            return Err(e);
        }
        if let Some(old) = &released {
            self.detach_volumes(id, old).await;
        }
        self.notify(&m, Some(event_id));

        if was_running {
            let old = MachineRecord {
                instance_id: old_version,
                ..m.clone()
            };
            let (signal, timeout) = stop_params(
                &old.config,
                &StopOptions {
                    signal: None,
                    timeout: None,
                },
            );
            let stopped = self.runtime.stop(&old, signal, timeout).await;
            self.or_fail(&mut m, "update", stopped).await?;
        }
        let final_state = match (launch, was_running) {
            (true, _) => MachineState::Started,
            (false, true) => MachineState::Stopped,
            (false, false) => previous,
        };
        if launch {
            let secrets = self.open_secrets(&m.app).await;
            let secrets = self
                .or_fail(&mut m, "update", secrets.map_err(secrets_failure))
                .await?;
            let started = self.runtime.start(&m, &secrets).await;
            self.or_fail(&mut m, "update", started).await?;
        }
        self.transition(&mut m, final_state, "update", Source::Platform, None)
            .await?;
        Ok(m)
    }

    /// What a started machine uses now (412 when it is not started).
    pub async fn machine_stats(
        &self,
        app: &str,
        id: &str,
    ) -> ServiceResult<crate::runtime::MachineStats> {
        let m = self.get_machine(app, id, false).await?;
        require_started(&m)?;
        Ok(self.runtime.stats(&m).await?)
    }

    /// Fills `image_ref` with what the image resolved to here (digest, labels) once it is stored.
    pub(super) async fn refresh_image_ref(&self, m: &mut MachineRecord) {
        let Some(image) = main_image(&m.config) else {
            return;
        };
        let pinned = m.image_digests.get(&image).cloned();
        if let Some(r) = self.runtime.image_ref(&image, pinned.as_deref()).await {
            m.image_ref = Some(r);
        }
    }
}

impl Hangar {
    /// Every machine not destroyed that runs on this host, across apps. With a shared store
    /// (cluster mode) each host is the authority for its own machines only; on a single host
    /// every machine is its own, whatever host name it was made under (a renamed or restored
    /// host keeps its machines).
    pub async fn live_machines(&self) -> ServiceResult<Vec<MachineRecord>> {
        let mut machines = db(&self.store, |s| s.list_live_machines()).await?;
        if self.is_cluster() {
            machines.retain(|m| m.host_id == self.host_id);
        }
        Ok(machines)
    }
}
