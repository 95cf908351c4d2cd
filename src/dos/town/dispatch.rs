//! Dispatch: open issues handed to polecats in the container, from the alarm only (so there
//! is one dispatcher). Everything it claims (the bead in progress, the agent working) is
//! written before the container is called, and what it writes after the call is conditional
//! on the rows still being as it left them: an agent may call `done` before its start has even
//! been answered, and a user may close the bead meanwhile. The rig's room and the claim are
//! `transitions`'s; backoff and the breaker are `policy`'s.

use super::store::{self, Actor, Candidate, Polecat};
use super::{Meta, TownDO};
use crate::config;
use crate::storage::{bump_meta, meta, set_meta};
use gastown_core::agent_settings::effective_model;
use gastown_core::beads::BeadEventKind;
use gastown_core::control::{AgentBead, AgentStartBody, ALLOW_LOCAL_GIT_ENV};
use gastown_core::error::ApiError;
use gastown_core::ids::{AgentId, RigId};
use gastown_core::model::{Agent, Rig, Town};
use gastown_core::policy::{self, Breaker, DispatchRetry};
use gastown_core::protocol::container::{self as c, AgentStarted};
use gastown_core::time::rfc3339;
use gastown_core::town_config::TownConfig;
use gastown_core::transitions;
use gastown_core::vocab::Role;
use worker::console_error;

type Reply<T> = Result<T, ApiError>;

impl TownDO {
    fn breaker(&self) -> Reply<Breaker> {
        let sql = self.sql();
        Ok(Breaker {
            failures: u32::try_from(meta(&sql, Meta::BreakerFailures)?.unwrap_or(0))
                .unwrap_or(u32::MAX),
            open_until_ms: meta(&sql, Meta::BreakerOpenUntil)?.unwrap_or(0),
        })
    }

    fn set_breaker(&self, breaker: Breaker) -> Reply<()> {
        let sql = self.sql();
        set_meta(&sql, Meta::BreakerFailures, u64::from(breaker.failures))?;
        set_meta(&sql, Meta::BreakerOpenUntil, breaker.open_until_ms)
    }

    /// Records a new idle agent, within `MAX_AGENTS_PER_TOWN`.
    pub(super) fn insert_agent(&self, role: Role, rig: Option<&RigId>, name: &str) -> Reply<Agent> {
        let sql = self.sql();
        let max = config::get(&self.env).quotas.agents_per_town;
        if store::agent_count(&sql)? >= max {
            return Err(ApiError::QuotaExceeded {
                limit: "MAX_AGENTS_PER_TOWN",
                max,
            });
        }
        let id = AgentId::parse(&config::new_id()?).map_err(ApiError::internal)?;
        store::insert_agent(&sql, &id, role, name, rig, rfc3339(config::now_ms()))?;
        store::agent(&sql, id.as_str())?.ok_or_else(|| ApiError::internal("agent row missing"))
    }

    /// Hands open issues to polecats: at most the rig's polecat limit working per rig, none
    /// while the breaker is open, one probe when it has been open.
    pub(super) async fn dispatch(&self, town: &Town) -> Reply<()> {
        let settings = config::get(&self.env).work.clone();
        let now = config::now_ms();
        if self.wedge_breaker_open(now)? {
            return Ok(());
        }
        let mut budget = match self.breaker()?.allowance(now) {
            Some(0) => return Ok(()),
            Some(n) => n,
            None => usize::MAX,
        };
        let config = self.config(&town.id)?;
        for candidate in store::candidates(&self.sql(), now)? {
            if budget == 0 {
                break;
            }
            let Some(rig) = store::rig(&self.sql(), &candidate.rig_id)? else {
                self.fail_bead(&candidate.id, "its rig was removed from the town")?;
                continue;
            };
            let limit =
                transitions::polecat_limit(&config, rig.id.as_str(), settings.default_max_polecats);
            if !transitions::rig_has_room(store::working_on_rig(&self.sql(), &rig.id)?, limit) {
                continue;
            }
            let Some(agent) = self.polecat_for(&rig)? else {
                continue;
            };
            budget -= 1;
            let claim = transitions::claim(candidate.dispatch_attempts as u32);
            self.claim(&candidate.id, &agent, claim)?;
            let started = self
                .start_agent(town, || {
                    self.agent_body(town, &config, &rig, &agent, &candidate)
                })
                .await;
            self.still_here()?;
            match started {
                Ok(()) => {
                    self.set_breaker(Breaker::default())?;
                    bump_meta(&self.sql(), Meta::Dispatches)?;
                }
                Err(error) => {
                    self.dispatch_failed(&candidate.id, &agent.id, claim.attempts, &error)?
                }
            }
            // The town may have been stopped while the container was called: dispatch no more
            // (the stop handed its running work back, and its start re-arms the loop).
            if self.stored_status()?.is_stopped() {
                break;
            }
        }
        Ok(())
    }

    /// An idle (or stalled) polecat of the rig, or a new one within the town's agent quota.
    fn polecat_for(&self, rig: &Rig) -> Reply<Option<Polecat>> {
        let sql = self.sql();
        if let Some(agent) = store::free_polecat(&sql, &rig.id)? {
            return Ok(Some(agent));
        }
        let n = store::polecat_count(&sql, &rig.id)?;
        match self.insert_agent(Role::Polecat, Some(&rig.id), &format!("polecat-{}", n + 1)) {
            Ok(agent) => Ok(Some(Polecat {
                id: agent.id.as_str().to_owned(),
                name: agent.name,
            })),
            // At the quota: this bead waits for an agent to come free.
            Err(ApiError::QuotaExceeded { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bead in progress with the agent, the agent working on it: before the container is
    /// called, so the agent's first callback finds both.
    fn claim(&self, bead_id: &str, agent: &Polecat, claim: transitions::Claim) -> Reply<()> {
        let sql = self.sql();
        let now = config::now_ms();
        store::claim(&sql, bead_id, &agent.id, claim.status, claim.attempts, now)?;
        store::settle_convoy_of(&sql, bead_id, now)?;
        store::event(
            &sql,
            bead_id,
            BeadEventKind::Dispatched,
            &Actor::Town,
            Some(&format!("to {} (attempt {})", agent.name, claim.attempts)),
            now,
        )
    }

    /// A failed start: the bead opens again after its backoff, or fails at the attempt cap;
    /// the breaker counts it. Only if the rows are still as the claim left them.
    fn dispatch_failed(
        &self,
        bead_id: &str,
        agent_id: &str,
        attempts: u32,
        error: &str,
    ) -> Reply<()> {
        let settings = config::get(&self.env).work.clone();
        let now = config::now_ms();
        let sql = self.sql();
        self.set_breaker(self.breaker()?.failed(now, settings.breaker_ms))?;
        bump_meta(&sql, Meta::DispatchFailures)?;
        store::release_agent_of(&sql, agent_id, bead_id)?;
        if store::bead_held_by(&sql, bead_id, agent_id)?.is_none() {
            return Ok(());
        }
        store::event(
            &sql,
            bead_id,
            BeadEventKind::DispatchFailed,
            &Actor::Town,
            Some(error),
            now,
        )?;
        match policy::after_dispatch_failure(
            attempts,
            now,
            settings.retry_base_ms,
            settings.retry_max_ms,
            error,
        ) {
            DispatchRetry::RetryAt(at) => store::retry_bead(&sql, bead_id, at, &rfc3339(now)),
            DispatchRetry::Fail(reason) => {
                self.fail_bead(bead_id, &reason)?;
                match store::bead(&sql, bead_id)? {
                    Some(failed) => self.escalate(&failed, &reason, "dispatch-failed"),
                    None => Ok(()),
                }
            }
        }
    }

    /// Starts the agent in the container, starting the container first (fresh tokens, current
    /// env) if it is not running, or no longer knows the town. `body` builds the start's body
    /// once the container runs, so it carries the tokens that start minted.
    pub(super) async fn start_agent(
        &self,
        town: &Town,
        body: impl Fn() -> Reply<AgentStartBody>,
    ) -> Result<(), String> {
        let internal = |e: ApiError| {
            console_error!("town {}: dispatch: {e}", town.id);
            "the town could not prepare the agent".to_owned()
        };
        if !self.container_started().map_err(internal)? {
            self.start_for_dispatch(town).await?;
        }
        for attempt in 0..2 {
            let body = body().map_err(internal)?;
            let started = self
                .container(&town.id)
                .map_err(internal)?
                .call(c::StartAgent {
                    town_id: town.id.clone(),
                    agent: body,
                })
                .await
                .map_err(internal)?;
            self.still_here().map_err(internal)?;
            match started {
                AgentStarted::Started => return Ok(()),
                AgentStarted::Failed { error } => return Err(error),
                AgentStarted::TownUnknown if attempt == 0 => self.start_for_dispatch(town).await?,
                AgentStarted::TownUnknown => {}
            }
        }
        Err("the container does not know the town after a restart".into())
    }

    pub(super) async fn start_for_dispatch(&self, town: &Town) -> Result<(), String> {
        match self.push_start(town).await {
            Ok(pushed) if pushed.accepted => {
                set_meta(&self.sql(), Meta::WorkSeenAt, config::now_ms()).ok();
                Ok(())
            }
            Ok(_) => Err("the container did not start".into()),
            Err(e) => {
                console_error!("town {}: container start for dispatch: {e}", town.id);
                Err("the container could not be started".into())
            }
        }
    }

    /// Every agent's env: the town's (with the current gateway token), a fresh container token
    /// it may start with (it reads the current one from its file on every call), and its
    /// heartbeat interval (a quarter of the stall time).
    pub(super) fn agent_env(
        &self,
        town: &Town,
        config: &TownConfig,
    ) -> Reply<std::collections::BTreeMap<String, String>> {
        let mut env = self.container_env(config);
        let (token, _) = self.mint(town)?;
        env.insert("GASTOWN_CONTAINER_TOKEN".to_owned(), token);
        let stall_ms = config::get(&self.env).work.stall_ms;
        env.insert(
            "GASTOWN_HEARTBEAT_MS".to_owned(),
            (stall_ms / 4).max(250).to_string(),
        );
        Ok(env)
    }

    /// What the control server needs to run one polecat on one bead (its env: `agent_env`).
    fn agent_body(
        &self,
        town: &Town,
        config: &TownConfig,
        rig: &Rig,
        agent: &Polecat,
        bead: &Candidate,
    ) -> Reply<AgentStartBody> {
        let settings = config::get(&self.env);
        let mut env = self.agent_env(town, config)?;
        if settings.work.allow_local_git {
            env.insert(ALLOW_LOCAL_GIT_ENV.to_owned(), "1".to_owned());
        }
        Ok(AgentStartBody {
            town_id: town.id.clone(),
            agent_id: AgentId::parse(&agent.id).map_err(ApiError::internal)?,
            role: Role::Polecat,
            name: agent.name.clone(),
            rig_id: Some(rig.id.clone()),
            bead: Some(AgentBead {
                id: bead.id.clone(),
                title: bead.title.clone(),
                body: bead.body.clone(),
            }),
            git_url: Some(rig.git_url.clone()),
            default_branch: Some(rig.default_branch.clone()),
            branch: Some(
                bead.work_branch
                    .clone()
                    .unwrap_or_else(|| transitions::work_branch(&agent.name, &bead.id)),
            ),
            model: effective_model(config, Role::Polecat, Some(rig.id.as_str())).map(str::to_owned),
            worker_url: Some(settings.work.callback_url.clone()),
            organization_id: town.owner.org().cloned(),
            env,
        })
    }
}
