//! The lifecycle verbs: start (and resume), stop, suspend, restart, destroy, cordon, and the boot
//! and admission they share.

use super::*;

impl Hangar {
    /// Reserves the machine's size on this host, or Fly's capacity error (a 409).
    pub(super) fn admit(&self, id: &str, config: &MachineConfig) -> ServiceResult<()> {
        self.capacity
            .admit(id, guest_size(config))
            .map_err(capacity_error)
    }

    /// Whether the machine would be admitted now, without reserving anything.
    pub(super) fn check_fits(&self, id: &str, config: &MachineConfig) -> ServiceResult<()> {
        self.capacity
            .fits(id, guest_size(config))
            .map_err(capacity_error)
    }

    /// Boots the machine's current version and records `started`, or `failed` with the reason.
    pub(super) async fn boot(&self, m: &mut MachineRecord, kind: &str) -> ServiceResult<()> {
        let boot_started = std::time::Instant::now();
        self.boot_prelude(m, kind).await?;
        let started = self.launch(m).await;
        self.boot_ends(m, kind, started, boot_started).await
    }

    /// Whether a boot writes the machine before its launch: its private addresses or image
    /// pins are still to be made ([`Self::boot_prelude`]).
    fn boot_writes_first(&self, m: &MachineRecord) -> bool {
        !super::network::has_addresses(m)
            || crate::container_plan::container_configs(&m.config)
                .iter()
                .any(|c| !m.image_digests.contains_key(&c.image))
    }

    /// What a boot may have to write first: the machine's private addresses, and the image
    /// pins of a version created without a launch.
    async fn boot_prelude(&self, m: &mut MachineRecord, kind: &str) -> ServiceResult<()> {
        if let Err(e) = self.ensure_addresses(m).await {
            let request = Some(json!({ "error": e.to_string() }));
            self.transition(m, MachineState::Failed, kind, Source::Platform, request)
                .await?;
            return Err(e);
        }
        if crate::container_plan::container_configs(&m.config)
            .iter()
            .any(|c| !m.image_digests.contains_key(&c.image))
        {
            let pins = self.runtime.fetch_images(&m.config).await;
            let pins = self.or_fail(m, kind, pins).await?;
            m.image_digests = pins;
            self.save(m, false, None, None).await?;
        }
        Ok(())
    }

    /// The runtime's start of `m`, with the app's secrets as they are now (Fly: new values
    /// reach a machine at its next start or update). Writes nothing.
    async fn launch(&self, m: &MachineRecord) -> Result<(), crate::runtime::RuntimeError> {
        use futures_util::FutureExt;
        let secrets = self.open_secrets(&m.app).await.map_err(secrets_failure)?;
        // A bug in the runtime must leave the machine `failed`, not stuck in `starting`: the
        // panic becomes an error (and whatever it left behind is cleaned up by the next start
        // or the destroy).
        std::panic::AssertUnwindSafe(self.runtime.start(m, &secrets))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                tracing::error!(machine = %m.id, "starting the machine panicked: {what}");
                Err(crate::runtime::RuntimeError::Failed(format!(
                    "internal error while starting: {what}"
                )))
            })
    }

    /// Records how a launch went: `started`, or `failed` with the reason.
    async fn boot_ends(
        &self,
        m: &mut MachineRecord,
        kind: &str,
        started: Result<(), crate::runtime::RuntimeError>,
        boot_started: std::time::Instant,
    ) -> ServiceResult<()> {
        self.or_fail(m, kind, started).await?;
        self.metrics
            .start_seconds
            .observe(boot_started.elapsed().as_secs_f64());
        self.transition(m, MachineState::Started, kind, Source::Platform, None)
            .await
    }

    /// A runtime failure in the middle of a transition leaves the machine `failed` (with the
    /// error in the event), never stuck in `stopping` or `destroying`.
    pub(super) async fn or_fail<T>(
        &self,
        m: &mut MachineRecord,
        kind: &str,
        result: Result<T, crate::runtime::RuntimeError>,
    ) -> ServiceResult<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let request = Some(json!({ "error": e.to_string() }));
                self.transition(m, MachineState::Failed, kind, Source::Platform, request)
                    .await?;
                Err(e.into())
            }
        }
    }

    pub async fn start(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> ServiceResult<MachineState> {
        self.start_internal(app, id, Source::User, Some(nonce))
            .await
    }

    /// Starts (or resumes) a machine; returns the state it was in. A user start (`lease` is
    /// `Some`) checks the lease and the schedule under the machine's lock.
    pub(super) async fn start_internal(
        &self,
        app: &str,
        id: &str,
        source: Source,
        lease: Option<Option<&str>>,
    ) -> ServiceResult<MachineState> {
        if lease.is_some() {
            // A user start during a stop (or destroy, update, restart) is refused at once
            // rather than queued behind it and run afterwards.
            let now = self.get_machine(app, id, false).await?;
            if now.state.refuses_start_while_busy() {
                return Err(ServiceError::precondition(format!(
                    "unable to start machine from state {}",
                    now.state
                )));
            }
        }
        let (_guard, mut m) = self.lock_machine(app, id).await?;
        if let Some(nonce) = lease {
            self.check_lease(&m, nonce).await?;
            if m.spec().schedule.is_some() {
                return Err(ServiceError::bad_request(
                    "machines with a schedule are started by the scheduler and cannot be started manually",
                ));
            }
        }
        let previous = m.state;
        match m.state {
            MachineState::Started => return Ok(previous),
            s if s.can_start() => {}
            other => {
                return Err(ServiceError::precondition(format!(
                    "unable to start machine from state {other}"
                )))
            }
        }
        if m.state == MachineState::Suspended {
            // Resume: thaw the frozen machine; its memory was kept.
            let resume = Some(json!({"resume": true}));
            self.transition_with(
                &mut m,
                MachineState::Starting,
                "start",
                source,
                resume,
                lease,
            )
            .await?;
            return match self.runtime.set_frozen(&m, false).await {
                Ok(()) => {
                    self.transition(
                        &mut m,
                        MachineState::Started,
                        "start",
                        Source::Platform,
                        None,
                    )
                    .await?;
                    Ok(previous)
                }
                Err(e) => {
                    let error = Some(json!({"error": e.to_string()}));
                    self.transition(
                        &mut m,
                        MachineState::Failed,
                        "start",
                        Source::Platform,
                        error,
                    )
                    .await?;
                    Err(e.into())
                }
            };
        }
        self.runtime.preflight(&m.config)?;
        self.admit(&m.id, &m.config)?;
        if self.boot_writes_first(&m) {
            self.transition_with(&mut m, MachineState::Starting, "start", source, None, lease)
                .await?;
            self.boot(&mut m, "start").await?;
            return Ok(previous);
        }
        // Nothing to write before the launch: `starting` goes to the store while the runtime
        // starts the machine (which needs nothing of that write, ~0.3 ms of each start), and
        // `started` or `failed` is written once both are done.
        let boot_started = std::time::Instant::now();
        let launching = m.clone();
        let (written, started) = tokio::join!(
            self.transition_with(&mut m, MachineState::Starting, "start", source, None, lease),
            self.launch(&launching),
        );
        if let Err(e) = written {
            if started.is_ok() {
                // Not recorded as starting (a lease taken meanwhile, the store failing): the
                // machine must not run either.
                let stopped = self
                    .runtime
                    .stop(&launching, hangar_api::Signal::SIGKILL, Duration::ZERO)
                    .await;
                if let Err(stop_error) = stopped {
                    tracing::warn!(machine = %m.id, error = %stop_error, "stopping a start that was not recorded");
                }
            }
            return Err(e);
        }
        self.boot_ends(&mut m, "start", started, boot_started)
            .await?;
        Ok(previous)
    }

    pub async fn stop(
        &self,
        app: &str,
        id: &str,
        opts: StopOptions,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        self.stop_by(app, id, opts, nonce, Source::User).await
    }

    /// [`stop`](Self::stop) on behalf of `source` (the proxy's autostop records itself).
    pub(crate) async fn stop_by(
        &self,
        app: &str,
        id: &str,
        opts: StopOptions,
        nonce: Option<&str>,
        source: Source,
    ) -> ServiceResult<()> {
        if let Some(sig) = opts.signal {
            if !sig.is_one_of(hangar_api::signal::STOP_SIGNALS) {
                return Err(ServiceError::bad_request(format!(
                    "invalid stop signal {sig}; use one of {}",
                    hangar_api::signal::STOP_SIGNALS.join(", ")
                )));
            }
        }
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        match m.state {
            MachineState::Started => {
                let (signal, timeout) = stop_params(&m.config, &opts);
                self.transition_with(&mut m, MachineState::Stopping, "stop", source, Some(json!({"signal": signal.name(), "timeout": hangar_api::GoDuration(timeout)})), Some(nonce)).await?;
                let stopped = self.runtime.stop(&m, signal, timeout).await;
                if let Some(exit) = self.or_fail(&mut m, "stop", stopped).await? {
                    let restarts = self.recent_restarts(&m.id).await?;
                    self.record_exit(&m, &exit, true, false, restarts).await?;
                }
                self.transition(
                    &mut m,
                    MachineState::Stopped,
                    "stop",
                    Source::Platform,
                    None,
                )
                .await?;
            }
            MachineState::Suspended => {
                // Stopping a suspended machine throws its snapshot away.
                let stopped = self.runtime.stop(&m, Signal::SIGKILL, Duration::ZERO).await;
                self.or_fail(&mut m, "stop", stopped).await?;
                self.transition_with(
                    &mut m,
                    MachineState::Stopped,
                    "stop",
                    source,
                    None,
                    Some(nonce),
                )
                .await?;
            }
            // A failed machine is recovered by a stop (reference 3.1): whatever is left of it
            // goes, and it is `stopped`, ready to start again.
            MachineState::Failed => {
                if let Err(e) = self.runtime.stop(&m, Signal::SIGKILL, Duration::ZERO).await {
                    tracing::warn!(machine = %m.id, error = %e, "releasing a failed machine");
                }
                self.transition_with(
                    &mut m,
                    MachineState::Stopped,
                    "stop",
                    source,
                    None,
                    Some(nonce),
                )
                .await?;
            }
            MachineState::Created | MachineState::Stopped => {}
            other => {
                return Err(ServiceError::precondition(format!(
                    "unable to stop machine while it is {other}"
                )))
            }
        }
        Ok(())
    }

    /// Freezes a started machine's cgroup; `start` thaws it.
    pub async fn suspend(&self, app: &str, id: &str, nonce: Option<&str>) -> ServiceResult<()> {
        self.suspend_by(app, id, nonce, Source::User).await
    }

    /// [`suspend`](Self::suspend) on behalf of `source`.
    pub(crate) async fn suspend_by(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
        source: Source,
    ) -> ServiceResult<()> {
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        match m.state {
            MachineState::Suspended => return Ok(()),
            s if s.can_suspend() => {}
            other => {
                return Err(ServiceError::precondition(format!(
                    "unable to suspend machine while it is {other}"
                )))
            }
        }
        self.transition_with(
            &mut m,
            MachineState::Suspending,
            "suspend",
            source,
            None,
            Some(nonce),
        )
        .await?;
        match self.runtime.set_frozen(&m, true).await {
            Ok(()) => {
                self.transition(
                    &mut m,
                    MachineState::Suspended,
                    "suspend",
                    Source::Platform,
                    None,
                )
                .await
            }
            Err(e) => {
                // Freezing failed, so the machine still runs.
                self.transition(
                    &mut m,
                    MachineState::Started,
                    "suspend",
                    Source::Platform,
                    Some(json!({"error": e.to_string()})),
                )
                .await?;
                Err(e.into())
            }
        }
    }

    pub async fn restart(
        &self,
        app: &str,
        id: &str,
        opts: StopOptions,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if !m.state.can_restart() {
            return Err(ServiceError::precondition(format!(
                "unable to restart machine: it is {}, not started",
                m.state
            )));
        }
        let (signal, timeout) = stop_params(&m.config, &opts);
        self.transition_with(
            &mut m,
            MachineState::Restarting,
            "restart",
            Source::User,
            None,
            Some(nonce),
        )
        .await?;
        let stopped = self.runtime.stop(&m, signal, timeout).await;
        if let Some(exit) = self.or_fail(&mut m, "restart", stopped).await? {
            let restarts = self.recent_restarts(&m.id).await?;
            self.record_exit(&m, &exit, true, true, restarts).await?;
        }
        self.boot(&mut m, "restart").await
    }

    pub async fn destroy(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        self.destroy_locked(app, id, nonce, force, false).await
    }

    pub(super) async fn destroy_locked(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
        force: bool,
        skip_lease: bool,
    ) -> ServiceResult<()> {
        if force {
            // A stop in progress holds the machine's lock for up to its whole grace period;
            // a forced destroy does not wait that out: it kills the processes, which ends the
            // stop, and then takes the lock.
            let m = self.get_machine(app, id, false).await?;
            // A start waiting for its containers holds the lock as long (up to 30 s).
            let stopping = matches!(
                m.state,
                MachineState::Stopping
                    | MachineState::Restarting
                    | MachineState::Replacing
                    | MachineState::Starting
            );
            if stopping && (skip_lease || self.check_lease(&m, nonce).await.is_ok()) {
                if let Err(e) = self.runtime.signal(&m, Signal::SIGKILL).await {
                    tracing::debug!(machine = %m.id, "forced destroy: kill during stop: {e}");
                }
            }
        }
        let (_guard, mut m) = self.lock_machine(app, id).await?;
        if !skip_lease {
            self.check_lease(&m, nonce).await?;
        }
        let stoppable = m.state.can_destroy_without_force();
        if !stoppable && !force {
            return Err(ServiceError::precondition(
                "unable to destroy machine, not currently stopped or suspended (use force=true)",
            ));
        }
        // The platform's own destroys (auto_destroy, app deletion) skip the lease.
        let lease = (!skip_lease).then_some(nonce);
        self.transition_with(
            &mut m,
            MachineState::Destroying,
            "destroy",
            Source::User,
            None,
            lease,
        )
        .await?;
        // The runtime kills what still runs (SIGKILL sent, the processes may still be ending)
        // and may release the rest after the answer.
        let destroyed = self.runtime.destroy(&m).await;
        self.or_fail(&mut m, "destroy", destroyed).await?;
        let mid = m.id.clone();
        db(&self.store, move |s| s.delete_lease(&mid)).await?;
        // Its volume outlives it, free for another machine.
        self.detach_volumes(&m.id, &m.config).await;
        self.transition(
            &mut m,
            MachineState::Destroyed,
            "destroy",
            Source::Platform,
            None,
        )
        .await?;
        // Waiters already woke; a later wait builds a fresh handle from the stored state.
        self.forget(&m.id);
        Ok(())
    }

    /// Drops the in-memory bookkeeping of a destroyed machine so churn does not grow it.
    pub(super) fn forget(&self, id: &str) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub async fn set_cordoned(
        &self,
        app: &str,
        id: &str,
        cordoned: bool,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        let (_guard, mut m) = self.lock_leased(app, id, nonce).await?;
        if m.cordoned != cordoned {
            m.cordoned = cordoned;
            m.updated_at = now_ms();
            self.save(&mut m, false, None, Some(nonce)).await?;
        }
        Ok(())
    }

    // ---- metadata ---------------------------------------------------------------------------
}
