//! Actions on a running machine's processes: signal, exec, ps, memory, container status.

use super::*;

impl Hangar {
    pub async fn signal(
        &self,
        app: &str,
        id: &str,
        signal: Signal,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        let (_guard, m) = self.lock_started(app, id, nonce).await?;
        self.runtime.signal(&m, signal).await?;
        Ok(())
    }

    /// Runs a command in a started machine.
    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        exec: ExecSpec,
        outside_containers: bool,
    ) -> ServiceResult<hangar_api::ExecResponse> {
        let m = self.started(app, id).await?;
        // An image machine's one container is the machine; a multi-container machine has
        // nothing to run in outside its containers (Pilot's own view is not the guest's).
        if outside_containers && m.config.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(ServiceError::bad_request(
                "machine: commands run inside a container here; pass container (one of the \
                 machine's containers) instead",
            ));
        }
        Ok(self.runtime.exec(&m, exec).await?)
    }

    pub async fn ps(&self, app: &str, id: &str) -> ServiceResult<Vec<hangar_api::ProcessStat>> {
        let m = self.started(app, id).await?;
        Ok(self.runtime.ps(&m).await?)
    }

    /// A started machine, for the actions that need its processes.
    pub(super) async fn started(&self, app: &str, id: &str) -> ServiceResult<MachineRecord> {
        let m = self.get_machine(app, id, false).await?;
        require_started(&m)?;
        Ok(m)
    }

    /// `GET …/memory`: the machine's memory limit and what is free under it, in MB.
    pub async fn memory(&self, app: &str, id: &str) -> ServiceResult<hangar_api::MemoryResponse> {
        let m = self.started(app, id).await?;
        let (limit, usage) = self.runtime.memory(&m).await?;
        Ok(memory_response(limit, usage))
    }

    /// `PUT …/memory`: moves the balloon. The limit may not exceed the machine's memory
    /// (`max_memory_mb` when set, else `memory_mb`); it lasts until the machine next boots.
    pub async fn set_memory_limit(
        &self,
        app: &str,
        id: &str,
        limit_mb: i64,
        nonce: Option<&str>,
    ) -> ServiceResult<hangar_api::MemoryResponse> {
        let (_guard, m) = self.lock_started(app, id, nonce).await?;
        let guest = m.config.guest.clone().unwrap_or_default();
        let ceiling = guest
            .max_memory_mb
            .filter(|&c| c > 0)
            .unwrap_or(guest.memory_mb);
        if limit_mb < MIN_MEMORY_LIMIT_MB || limit_mb > ceiling {
            return Err(ServiceError::bad_request(format!(
                "limit_mb must be between {MIN_MEMORY_LIMIT_MB} and {ceiling} (the machine's memory)"
            )));
        }
        self.runtime
            .set_memory_limit(&m, (limit_mb as u64).saturating_mul(1 << 20))
            .await?;
        let (limit, usage) = self.runtime.memory(&m).await?;
        Ok(memory_response(limit, usage))
    }

    /// `POST …/memory/reclaim`: frees up to `amount_mb` of the machine's memory.
    pub async fn reclaim_memory(
        &self,
        app: &str,
        id: &str,
        amount_mb: i64,
        nonce: Option<&str>,
    ) -> ServiceResult<hangar_api::ReclaimMemoryResponse> {
        let (_guard, m) = self.lock_started(app, id, nonce).await?;
        if amount_mb <= 0 || amount_mb > 1 << 20 {
            return Err(ServiceError::bad_request(
                "amount_mb must be greater than zero (and at most 1048576)",
            ));
        }
        let freed = self
            .runtime
            .reclaim_memory(&m, (amount_mb as u64).saturating_mul(1 << 20))
            .await?;
        Ok(hangar_api::ReclaimMemoryResponse {
            actual_mb: (freed >> 20) as i64,
        })
    }

    /// Starts an interactive command in a started machine (a console).
    pub async fn attach(
        &self,
        app: &str,
        id: &str,
        request: hangar_pilot::protocol::Request,
    ) -> ServiceResult<crate::runtime::ConsoleConnection> {
        let m = self.get_machine(app, id, false).await?;
        if m.state != MachineState::Started {
            return Err(ServiceError::precondition(format!(
                "machine is {}, not started",
                m.state
            )));
        }
        Ok(self.runtime.attach(&m, request).await?)
    }

    /// Live container statuses of a started machine (for the machine JSON).
    pub async fn containers(
        &self,
        m: &MachineRecord,
    ) -> Option<Vec<crate::runtime::ContainerView>> {
        if m.state != MachineState::Started {
            return None;
        }
        self.runtime.containers(m).await
    }
}
