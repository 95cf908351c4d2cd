//! What the two owner Durable Objects (`GastownUserDO`, `GastownOrgDO`) share: an owner's towns
//! and rigs (`store.rs`), the [`OwnerOps`] that serve them, and the watchdog alarm, which asks
//! each town's DO to re-arm an alarm that has gone missing. The watchdog runs only while the
//! owner has towns. Each DO struct is a thin shell around [`OwnerCore`].

mod store;

use super::{org, town, user, DoStub};
use crate::config;
use crate::rig_index;
use crate::storage::{bump_meta, MetaKey, Schema};
use gastown_core::error::ApiError;
use gastown_core::ids::RigId;
use gastown_core::model::{Owner, Rig, Town};
use gastown_core::protocol::owner::*;
use gastown_core::protocol::town::{AlarmArmed, EnsureAlarm};
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

type Reply<T> = Result<T, ApiError>;

impl OwnerOps for OwnerCore {
    fn prepare(&self) -> Reply<()> {
        self.schema.ensure(&self.sql(), config::now_ms())
    }

    async fn add_town(&self, AddTown { town }: AddTown) -> Reply<Town> {
        let max = config::get(&self.env).quotas.towns_per_owner;
        let town = store::add_town(&self.sql(), town, max)?;
        self.arm_watchdog().await?;
        Ok(town)
    }

    async fn list_towns(&self, ListTowns { page }: ListTowns) -> Reply<Json<Vec<Town>>> {
        store::list_towns(&self.sql(), &page)
    }

    async fn get_town(&self, GetTown { town_id }: GetTown) -> Reply<Json<Town>> {
        store::town_json(&self.sql(), &town_id)
    }

    async fn remove_town(&self, RemoveTown { town_id }: RemoveTown) -> Reply<RemovedTown> {
        store::remove_town(&self.sql(), &town_id)
    }

    async fn add_rig(&self, AddRig { rig }: AddRig) -> Reply<Rig> {
        let max = config::get(&self.env).quotas.rigs_per_town;
        store::add_rig(&self.sql(), rig, max)
    }

    async fn list_rigs(&self, ListRigs { town_id, page }: ListRigs) -> Reply<Json<Vec<Rig>>> {
        store::list_rigs(&self.sql(), &town_id, &page)
    }

    async fn get_rig(&self, GetRig { rig_id }: GetRig) -> Reply<Json<Rig>> {
        store::rig_json(&self.sql(), &rig_id)
    }

    async fn remove_rig(&self, RemoveRig { rig_id }: RemoveRig) -> Reply<Rig> {
        store::remove_rig(&self.sql(), &rig_id)
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
