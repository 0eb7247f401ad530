//! Machine leases (reference 1.3).

use super::*;

impl Hangar {
    pub async fn active_lease(&self, machine_id: &str) -> ServiceResult<Option<LeaseRecord>> {
        let id = machine_id.to_string();
        let lease = db(&self.store, move |s| s.get_lease(&id)).await?;
        Ok(lease.filter(|l| l.expires_at > now_secs()))
    }

    // ---- writes -----------------------------------------------------------------------------

    /// Refuses a mutation of a leased machine unless `nonce` matches the lease.
    pub(super) async fn check_lease(
        &self,
        m: &MachineRecord,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        if let Some(lease) = self.active_lease(&m.id).await? {
            if nonce != Some(lease.nonce.as_str()) {
                return Err(lease_conflict(m, &lease));
            }
        }
        Ok(())
    }

    pub async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Option<i64>,
        description: Option<String>,
        nonce: Option<&str>,
    ) -> ServiceResult<LeaseRecord> {
        let ttl = check_lease_ttl(ttl.unwrap_or(DEFAULT_LEASE_TTL))?;
        let (_guard, m) = self.lock_machine(app, id).await?;
        let current = self.active_lease(&m.id).await?;
        let lease = match (current, nonce) {
            (Some(l), Some(n)) if l.nonce == n => LeaseRecord {
                expires_at: now_secs() + ttl,
                description: description.unwrap_or(l.description.clone()),
                ..l
            },
            (Some(l), _) => return Err(lease_conflict(&m, &l)),
            (None, _) => LeaseRecord {
                machine_id: m.id.clone(),
                nonce: ids::new_nonce(),
                expires_at: now_secs() + ttl,
                owner: LEASE_OWNER.to_string(),
                description: description.unwrap_or_default(),
                version: m.instance_id.clone(),
            },
        };
        let rec = lease.clone();
        db(&self.store, move |s| s.put_lease(&rec)).await?;
        Ok(lease)
    }

    pub async fn release_lease(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> ServiceResult<()> {
        let Some(nonce) = nonce else {
            return Err(ServiceError::bad_request(
                "releasing a lease needs its nonce in the fly-machine-lease-nonce header",
            ));
        };
        let (_guard, m) = self.lock_machine(app, id).await?;
        let Some(lease) = self.active_lease(&m.id).await? else {
            return Err(ServiceError::not_found("lease not found"));
        };
        if lease.nonce != nonce {
            return Err(lease_conflict(&m, &lease));
        }
        let mid = m.id.clone();
        db(&self.store, move |s| s.delete_lease(&mid)).await
    }

    // ---- wait -------------------------------------------------------------------------------
}
