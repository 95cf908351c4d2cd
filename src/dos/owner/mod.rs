//! What the two owner Durable Objects (`GastownUserDO`, `GastownOrgDO`) share: an owner's towns
//! and rigs (`store.rs`), the [`OwnerOps`] that serve them, and the watchdog alarm, which asks
//! each town's DO to re-arm an alarm that has gone missing. The watchdog runs only while the
//! owner has towns. Each DO struct is a thin shell around [`OwnerCore`].

mod store;

use super::{org, town, user, DoStub};
use crate::config;
use crate::org_towns;
use crate::rig_index;
use crate::storage::{bump_meta, MetaKey, Schema};
use gastown_core::error::ApiError;
use gastown_core::ids::RigId;
use gastown_core::model::{Owner, Rig, Town};
use gastown_core::protocol::owner::*;
use gastown_core::protocol::town::{self as t, AlarmArmed, EnsureAlarm};
use gastown_core::protocol::{Ack, Json};
use gastown_core::schema;
use worker::{console_error, console_log, Env, Response, SqlStorage, State};

/// A stub of an owner's DO.
pub type OwnerStub = DoStub<OwnerOp>;

/// The DO holding `owner`'s towns and rigs.
///
/// # Errors
/// Internal, when the binding is missing.
pub fn stub(env: &Env, owner: &Owner) -> Result<OwnerStub, ApiError> {
    match owner {
        Owner::User(user) => DoStub::get(env, user::BINDING, user.as_str()),
        Owner::Org(org) => DoStub::get(env, org::BINDING, org.as_str()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Meta {
    WatchdogRuns,
}

impl MetaKey for Meta {
    fn key(self) -> &'static str {
        match self {
            Meta::WatchdogRuns => "watchdog_runs",
        }
    }
}

/// The body of an owner DO.
pub struct OwnerCore {
    state: State,
    env: Env,
    schema: Schema,
}

impl OwnerCore {
    pub fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            schema: Schema::new(schema::OWNER_DO),
        }
    }

    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    async fn arm_watchdog(&self) -> Result<(), ApiError> {
        let storage = self.state.storage();
        if storage
            .get_alarm()
            .await
            .map_err(ApiError::internal)?
            .is_none()
        {
            let ms = config::get(&self.env).watchdog_ms;
            storage
                .set_alarm(i64::try_from(ms).unwrap_or(i64::MAX))
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(())
    }

    /// The watchdog alarm. Failures are logged, never thrown, so the alarm is not retried in a loop.
    pub async fn alarm(&self) -> worker::Result<Response> {
        if let Err(e) = self.watchdog().await {
            console_error!("owner watchdog failed: {e}");
        }
        Response::ok("ok")
    }

    async fn watchdog(&self) -> Result<(), ApiError> {
        self.prepare()?;
        let sql = self.sql();
        let towns = store::all_town_ids(&sql)?;
        if towns.is_empty() {
            return Ok(());
        }
        // Reschedule first, so a failure below cannot stop the watchdog.
        self.arm_watchdog().await?;
        bump_meta(&sql, Meta::WatchdogRuns)?;
        if let Err(e) = self.reconcile_index().await {
            console_error!("watchdog: rig index: {e}");
        }
        if let Err(e) = self.reconcile_org_towns().await {
            console_error!("watchdog: org town index: {e}");
        }
        for town in towns {
            let result = match town::stub(&self.env, &town) {
                Ok(stub) => stub.call(EnsureAlarm {}).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(AlarmArmed { rearmed: true }) => {
                    console_log!("watchdog re-armed the alarm of town {town}");
                }
                Ok(_) => {}
                Err(e) => console_error!("watchdog: town {town}: {e}"),
            }
        }
        Ok(())
    }
}

impl OwnerCore {
    /// Makes the D1 rig index say what this DO holds: rows of rigs that are gone are dropped,
    /// missing rows are written.
    async fn reconcile_index(&self) -> Result<(), ApiError> {
        let sql = self.sql();
        let Some(any) = store::any_town(&sql)? else {
            return Ok(());
        };
        let rigs = store::all_rigs(&sql)?;
        let indexed = rig_index::rigs_of(&self.env, &any.owner).await?;
        let gone: Vec<RigId> = indexed
            .iter()
            .filter(|id| !rigs.iter().any(|r| &r.id == *id))
            .cloned()
            .collect();
        rig_index::remove(&self.env, &gone).await?;
        for rig in rigs.iter().filter(|r| !indexed.contains(&r.id)) {
            let town = store::get_town(&sql, &rig.town_id)?;
            rig_index::insert(&self.env, rig, &town).await?;
        }
        Ok(())
    }
}

impl OwnerCore {
    /// Makes the D1 index of org towns by user say what this (org) DO holds.
    async fn reconcile_org_towns(&self) -> Result<(), ApiError> {
        let towns = store::all_towns(&self.sql())?;
        match towns.first().map(|t| &t.owner) {
            Some(Owner::Org(org)) => org_towns::reconcile(&self.env, org, &towns).await,
            _ => Ok(()),
        }
    }
}

type Reply<T> = Result<T, ApiError>;

impl OwnerOps for OwnerCore {
    fn prepare(&self) -> Reply<()> {
        self.schema.ensure(&self.sql(), config::now_ms())
    }

    /// The owner's record first (the quota), then the town's DO; a failed init takes the
    /// record back.
    async fn create_town(&self, CreateTown { town }: CreateTown) -> Reply<Town> {
        let max = config::get(&self.env).quotas.towns_per_owner;
        let town = store::add_town(&self.sql(), town, max)?;
        let town_stub = town::stub(&self.env, &town.id)?;
        let inited = town_stub.call(t::Init { town: town.clone() }).await;
        let town = match inited {
            Ok(town) => town,
            Err(err) => {
                // The town's DO may hold part of it: destroy that too.
                if let Err(undo) = town_stub.call(t::Destroy {}).await {
                    console_error!("create town: could not remove the half-made town: {undo}");
                }
                store::remove_town(&self.sql(), &town.id)?;
                return Err(err);
            }
        };
        org_towns::record(&self.env, &town).await?;
        self.arm_watchdog().await?;
        Ok(town)
    }

    async fn list_towns(&self, ListTowns { page }: ListTowns) -> Reply<Json<Vec<Town>>> {
        store::list_towns(&self.sql(), &page)
    }

    async fn get_town(&self, GetTown { town_id }: GetTown) -> Reply<Json<Town>> {
        store::town_json(&self.sql(), &town_id)
    }

    /// Ownership is checked first (404 before anything is destroyed); then the town's DO
    /// (state, alarm, container) is destroyed, then the record and the index rows go.
    async fn delete_town(&self, DeleteTown { town_id }: DeleteTown) -> Reply<RemovedTown> {
        store::get_town(&self.sql(), &town_id)?;
        town::stub(&self.env, &town_id)?.call(t::Destroy {}).await?;
        let removed = store::remove_town(&self.sql(), &town_id)?;
        rig_index::remove(&self.env, &removed.rig_ids).await?;
        if matches!(removed.town.owner, Owner::Org(_)) {
            org_towns::remove(&self.env, &town_id).await?;
        }
        Ok(removed)
    }

    /// The record first (404 for another owner's town, the name and quota checks), then the
    /// town's DO, then the index; a failed step takes back what was written.
    async fn create_rig(&self, CreateRig { rig }: CreateRig) -> Reply<Rig> {
        let max = config::get(&self.env).quotas.rigs_per_town;
        let rig = store::add_rig(&self.sql(), rig, max)?;
        let town = store::get_town(&self.sql(), &rig.town_id)?;
        let town_stub = town::stub(&self.env, &rig.town_id)?;
        let registered = match town_stub.call(t::AddRig { rig: rig.clone() }).await {
            Ok(_) => rig_index::insert(&self.env, &rig, &town).await,
            Err(e) => Err(e),
        };
        if let Err(err) = registered {
            let undo_town = town_stub
                .call(t::RemoveRig {
                    rig_id: rig.id.clone(),
                })
                .await
                .map(|_| ());
            let undo_owner = store::remove_rig(&self.sql(), &rig.id).map(|_| ());
            if let (Err(e), _) | (_, Err(e)) = (undo_town, undo_owner) {
                console_error!(
                    "create rig: could not remove the half-made rig {}: {e}",
                    rig.id
                );
            }
            return Err(err);
        }
        Ok(rig)
    }

    /// The record first (404, the name check, a source changed meanwhile), then the town's DO.
    /// Patches of one rig may interleave at the town call; each re-reads the record after its
    /// call and sends it again while it differs from what it sent, so the town's copy ends as
    /// the record is. The index row holds nothing a patch changes.
    async fn patch_rig(
        &self,
        PatchRig {
            rig_id,
            town_id,
            change,
        }: PatchRig,
    ) -> Reply<Rig> {
        let before = store::get_rig(&self.sql(), &rig_id)?;
        if town_id.as_ref().is_some_and(|t| *t != before.town_id) {
            return Err(ApiError::NotFound("rig not found".into()));
        }
        let after = change.apply(&before)?;
        store::replace_rig(&self.sql(), &after)?;
        let town_stub = town::stub(&self.env, &after.town_id)?;
        let mut sent = after.clone();
        loop {
            if let Err(err) = town_stub.call(t::AddRig { rig: sent.clone() }).await {
                // Take the record back, unless another patch has changed it since.
                if store::get_rig(&self.sql(), &rig_id).is_ok_and(|now| now == after) {
                    if let Err(undo) = store::replace_rig(&self.sql(), &before) {
                        console_error!("patch rig: could not restore rig {rig_id}: {undo}");
                    }
                }
                return Err(err);
            }
            let now = match store::get_rig(&self.sql(), &rig_id) {
                Ok(now) => now,
                Err(gone) => {
                    // Deleted meanwhile: the town must not keep what this call put back.
                    let _ = town_stub
                        .call(t::RemoveRig {
                            rig_id: rig_id.clone(),
                        })
                        .await;
                    return Err(gone);
                }
            };
            if now == sent {
                return Ok(now);
            }
            sent = now;
        }
    }

    async fn list_rigs(&self, ListRigs { town_id, page }: ListRigs) -> Reply<Json<Vec<Rig>>> {
        store::list_rigs(&self.sql(), &town_id, &page)
    }

    async fn get_rig(&self, GetRig { rig_id }: GetRig) -> Reply<Json<Rig>> {
        store::rig_json(&self.sql(), &rig_id)
    }

    /// 404 for another owner's rig before anything changes; then the town's DO lets it go
    /// (its waiting work fails), then the record and the index row.
    async fn delete_rig(&self, DeleteRig { rig_id }: DeleteRig) -> Reply<Rig> {
        let rig = store::get_rig(&self.sql(), &rig_id)?;
        town::stub(&self.env, &rig.town_id)?
            .call(t::RemoveRig {
                rig_id: rig_id.clone(),
            })
            .await?;
        let rig = store::remove_rig(&self.sql(), &rig_id)?;
        rig_index::remove(&self.env, std::slice::from_ref(&rig_id)).await?;
        Ok(rig)
    }

    /// The town's DO decides (it stops a town acting as the user); the record follows, and
    /// the index forgets the user.
    async fn forget_town_user(
        &self,
        ForgetTownUser { town_id, user_id }: ForgetTownUser,
    ) -> Reply<Town> {
        store::get_town(&self.sql(), &town_id)?;
        let town = town::stub(&self.env, &town_id)?
            .call(t::ForgetUser { user_id })
            .await?;
        store::record_town(&self.sql(), &town)?;
        org_towns::record(&self.env, &town).await?;
        Ok(town)
    }

    async fn claim_town(&self, ClaimTown { town_id, user_id }: ClaimTown) -> Reply<Town> {
        store::get_town(&self.sql(), &town_id)?;
        let town = town::stub(&self.env, &town_id)?
            .call(t::Claim { user_id })
            .await?;
        store::record_town(&self.sql(), &town)?;
        org_towns::record(&self.env, &town).await?;
        Ok(town)
    }

    async fn set_town_status(
        &self,
        SetTownStatus { town_id, status }: SetTownStatus,
    ) -> Reply<Ack> {
        store::set_town_status(&self.sql(), &town_id, status)?;
        Ok(Ack::OK)
    }
}

/// Declares an owner DO class: a shell whose every call goes to its [`OwnerCore`].
macro_rules! owner_do {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[worker::durable_object]
        pub struct $name {
            core: $crate::dos::owner::OwnerCore,
        }

        $crate::dos::rpc_entry!(
            $name,
            gastown_core::protocol::owner::OwnerOp,
            this => &this.core
        );

        impl worker::DurableObject for $name {
            fn new(state: worker::State, env: worker::Env) -> Self {
                Self {
                    core: $crate::dos::owner::OwnerCore::new(state, env),
                }
            }

            async fn fetch(&self, _req: worker::Request) -> worker::Result<worker::Response> {
                $crate::dos::no_fetch()
            }

            async fn alarm(&self) -> worker::Result<worker::Response> {
                self.core.alarm().await
            }
        }
    };
}
pub(crate) use owner_do;
