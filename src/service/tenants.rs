//! Tenant operations: create (with its first active key, in one transaction), update the
//! policy, read.

use super::ServiceError;
use super::keys::{KeyService, apply_locally, audit_events, resolve};
use crate::domain::{Actor, AuditEvent, EventKind, PolicyPatch, Tenant, TenantId, rotate, validate_identity};

/// What a client may give when creating a tenant; everything but the id has a default.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub policy: PolicyPatch,
}

impl KeyService {
    /// Creates a tenant with one active key. Returns the tenant and its active kid.
    pub async fn create_tenant(&self, new: NewTenant, actor: &Actor) -> Result<(Tenant, String), ServiceError> {
        let now = self.clock.now();
        let issuer = new.issuer.unwrap_or_else(|| format!("{}/a/{}", self.settings.public_url, new.id));
        let audiences = new.audiences.unwrap_or_else(|| vec![new.id.to_string()]);
        validate_identity(&issuer, &audiences)?;
        let policy = new.policy.apply(&self.settings.tenant_defaults);
        policy.validate(self.settings.jwks_max_age)?;
        let tenant = Tenant { id: new.id, issuer, audiences, policy, created_at: now, updated_at: now };

        let plan = rotate(&[], tenant.policy.signing_alg, false);
        let fresh = match plan.fresh {
            Some(alg) => Some(self.new_key(&tenant.id, alg).await?),
            None => None,
        };
        let mut loaded =
            crate::store::LoadedTenant { tenant: tenant.clone(), version: 1, keys: Vec::new(), secrets: Vec::new() };
        let changes = resolve(&plan, fresh.as_ref());
        let mut events = vec![
            AuditEvent::new(EventKind::TenantCreated, Some(&tenant.id), actor, now)
                .detail(serde_json::to_value(&tenant).unwrap_or_default()),
        ];
        events.extend(audit_events(&tenant.id, actor, now, &changes, fresh.as_ref(), &serde_json::Value::Null));
        self.store.create_tenant(&tenant, &plan, fresh.as_ref(), now, &events).await.map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                ServiceError::Conflict(format!("tenant `{}` already exists", tenant.id))
            }
            e => e.into(),
        })?;
        apply_locally(&mut loaded, &plan, fresh, now)?;
        let active_kid = loaded.keys.first().map(|k| k.meta.kid.clone()).unwrap_or_default();
        let snapshot = self.build(loaded)?;
        self.publish(snapshot).await;
        Ok((tenant, active_kid))
    }

    /// Creates the tenant unless it exists (first start; several replicas may race).
    pub async fn ensure_tenant(&self, id: &TenantId, actor: &Actor) -> Result<bool, ServiceError> {
        if self.store.get_tenant(id).await?.is_some() {
            return Ok(false);
        }
        let new = NewTenant { id: id.clone(), issuer: None, audiences: None, policy: PolicyPatch::default() };
        match self.create_tenant(new, actor).await {
            Ok(_) => Ok(true),
            Err(ServiceError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Changes issuer, audiences and/or policy; the result must pass the same rules as on
    /// creation. A new `signing_alg` applies to keys created from now on.
    pub async fn update_tenant(
        &self,
        id: &TenantId,
        issuer: Option<String>,
        audiences: Option<Vec<String>>,
        patch: PolicyPatch,
        actor: &Actor,
    ) -> Result<Tenant, ServiceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let loaded = self.store.load_tenant(id).await?.ok_or(ServiceError::NotFound("tenant"))?;
            let current = loaded.tenant;
            let now = self.clock.now();
            let updated = Tenant {
                issuer: issuer.clone().unwrap_or_else(|| current.issuer.clone()),
                audiences: audiences.clone().unwrap_or_else(|| current.audiences.clone()),
                policy: patch.apply(&current.policy),
                updated_at: now,
                ..current.clone()
            };
            validate_identity(&updated.issuer, &updated.audiences)?;
            updated.policy.validate(self.settings.jwks_max_age)?;
            let event = AuditEvent::new(EventKind::TenantUpdated, Some(id), actor, now)
                .detail(serde_json::json!({ "before": current, "after": updated }));
            match self.store.update_tenant(&updated, loaded.version, &[event]).await {
                Ok(()) => {
                    self.reload_and_publish(id).await;
                    return Ok(updated);
                }
                // Another change landed in between: apply the patch to what is there now,
                // so two PATCHes of different fields both take effect.
                Err(crate::store::StoreError::Stale(_)) if attempt < 5 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn get_tenant(&self, id: &TenantId) -> Result<Tenant, ServiceError> {
        self.store.get_tenant(id).await?.ok_or(ServiceError::NotFound("tenant"))
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ServiceError> {
        Ok(self.store.list_tenants().await?)
    }
}
