//! The running container's health, and what the town does when it loses it.
//!
//! * **Health checks.** While the container runs (busy or idle), the loop asks its control
//!   server for `/health` every `CONTAINER_HEALTH_INTERVAL_MS`, each answer due within
//!   `CONTAINER_HEALTH_TIMEOUT_MS`. Any accepted token push also counts as an answer.
//! * **Wedged containers.** One that answered nothing for `CONTAINER_WEDGED_MS` is stopped and
//!   started again with fresh tokens (the generation advances, so nothing of the deaf one is
//!   honoured past the grace), at most `CONTAINER_RESTARTS_PER_HOUR` times in an hour
//!   (`policy::on_unhealthy`). Past that the town's breaker opens until the hour ends: nothing is
//!   dispatched, and the owner reads why in `GET /api/towns/:id/container` (`breaker`). A
//!   container that answers again closes it.
//! * **Eviction resets.** When the town learns its container was evicted or restarted (a
//!   restart here, or a token push answered by a container that had lost everything it held),
//!   the beads of its working agents go back to open and the agents are idle, except agents
//!   heard from within `EVICTION_HEARTBEAT_GUARD_MS` (90 s): they may still be working,
//!   and patrol's stall time applies to them as to any agent. A reset counts toward no crash
//!   loop. Agents an eviction drain stopped report themselves (`agent_drained`) and resume on
//!   their branches.

use super::store::{self, Actor};
use super::{gone_is_not_found, Meta, TownDO};
use crate::config;
use crate::storage::{bump_meta, meta, set_meta};
use gastown_core::beads::{BeadEventKind, BeadStatus};
use gastown_core::error::ApiError;
use gastown_core::model::{AgentStatus, Town};
use gastown_core::policy::{self, Restarts, Unhealthy};
use gastown_core::protocol::container::{self as c, BreakerView};
use gastown_core::time::rfc3339;
use worker::console_error;

type Reply<T> = Result<T, ApiError>;

impl TownDO {
    /// One health check of the running container, and what follows a failed one.
    pub(super) async fn probe_container(&self, town: &Town) -> Reply<()> {
        let settings = config::get(&self.env).work.clone();
        let sql = self.sql();
        set_meta(&sql, Meta::ContainerProbedAt, config::now_ms())?;
        let probed = self
            .container(&town.id)?
            .call(c::Probe {
                town_id: town.id.clone(),
                timeout_ms: settings.health_timeout_ms,
            })
            .await
            .map_err(gone_is_not_found)?;
        self.still_here()?;
        let now = config::now_ms();
        if probed.healthy {
            self.container_answered(now)?;
            return Ok(());
        }
        // Silent since its last answer, or since it started if it never answered.
        let answered_at = meta(&sql, Meta::ContainerAnsweredAt)?.unwrap_or(now);
        match policy::on_unhealthy(
            answered_at,
            now,
            settings.wedged_ms,
            self.restarts()?,
            settings.restarts_per_hour,
        ) {
            Unhealthy::Wait => Ok(()),
            Unhealthy::Restart => self.restart_wedged(town, now).await,
            Unhealthy::OpenBreaker { until_ms, .. } => {
                if meta(&sql, Meta::WedgeBreakerUntil)?.unwrap_or(0) < until_ms {
                    console_error!(
                        "town {}: container still wedged after its restarts; breaker open",
                        town.id
                    );
                }
                set_meta(&sql, Meta::WedgeBreakerUntil, until_ms)
            }
        }
    }

    /// The container answered (a health check, an accepted push): it is not wedged, and a
    /// breaker its silence opened closes.
    pub(super) fn container_answered(&self, now: u64) -> Reply<()> {
        let sql = self.sql();
        set_meta(&sql, Meta::ContainerAnsweredAt, now)?;
        set_meta(&sql, Meta::WedgeBreakerUntil, 0)
    }

    fn restarts(&self) -> Reply<Restarts> {
        let sql = self.sql();
        Ok(Restarts {
            window_start_ms: meta(&sql, Meta::RestartWindowStart)?.unwrap_or(0),
            in_window: meta(&sql, Meta::RestartsInWindow)?.unwrap_or(0),
        })
    }

    /// Stops the deaf container and starts it again with fresh tokens; its agents are gone.
    /// The restart is counted whether or not the start succeeds: a container that cannot be
    /// started again uses up the cap as surely as one that wedges again.
    async fn restart_wedged(&self, town: &Town, now: u64) -> Reply<()> {
        let sql = self.sql();
        let restarts = self.restarts()?.counted(now);
        set_meta(&sql, Meta::RestartWindowStart, restarts.window_start_ms)?;
        set_meta(&sql, Meta::RestartsInWindow, restarts.in_window)?;
        bump_meta(&sql, Meta::WedgeRestarts)?;
        console_error!(
            "town {}: container wedged; restarting it ({} this hour)",
            town.id,
            restarts.in_window
        );
        // Its silence is measured afresh from this restart.
        set_meta(&sql, Meta::ContainerAnsweredAt, now)?;
        self.reset_after_eviction("its container answered no health check and was restarted")?;
        self.advance_generation()?;
        self.container(&town.id)?
            .call(c::Stop {
                town_id: town.id.clone(),
            })
            .await
            .map_err(gone_is_not_found)?;
        self.still_here()?;
        let pushed = self.push_start(town).await?;
        if !pushed.accepted {
            console_error!(
                "town {}: the restarted container refused its start",
                town.id
            );
        }
        Ok(())
    }

    /// The container was evicted or restarted: working agents not heard from within the guard
    /// are gone, and their beads open again (see the module's rules).
    pub(super) fn reset_after_eviction(&self, why: &str) -> Reply<()> {
        let sql = self.sql();
        let now = config::now_ms();
        let mayor = store::mayor(&sql)?.map(|m| m.id);
        let guard = config::get(&self.env).work.eviction_guard_ms;
        let gone = store::silent_agents(&sql, now.saturating_sub(guard))?;
        for agent in gone {
            bump_meta(&sql, Meta::EvictionResets)?;
            if mayor.as_ref().is_some_and(|m| m.as_str() == agent.id) {
                self.mayor_session_lost()?;
                continue;
            }
            store::release_agent(&sql, &agent.id, AgentStatus::Idle)?;
            let Some(bead) = agent.current_bead_id else {
                continue;
            };
            if store::bead_held_by(&sql, &bead, &agent.id)?.is_none() {
                continue;
            }
            store::hand_back_bead(&sql, &bead, BeadStatus::Open, &rfc3339(now))?;
            store::event(
                &sql,
                &bead,
                BeadEventKind::Reopened,
                &Actor::Town,
                Some(why),
                now,
            )?;
            store::settle_convoy_of(&sql, &bead, now)?;
        }
        Ok(())
    }

    /// Whether the breaker a wedged container opened holds dispatch now.
    pub(super) fn wedge_breaker_open(&self, now: u64) -> Reply<bool> {
        Ok(meta(&self.sql(), Meta::WedgeBreakerUntil)?.unwrap_or(0) > now)
    }

    /// The breaker as its owner reads it, while it is open.
    pub(super) fn breaker_view(&self) -> Reply<Option<BreakerView>> {
        let sql = self.sql();
        let now = config::now_ms();
        let until = meta(&sql, Meta::WedgeBreakerUntil)?.unwrap_or(0);
        if until <= now {
            return Ok(None);
        }
        let silent_s =
            now.saturating_sub(meta(&sql, Meta::ContainerAnsweredAt)?.unwrap_or(now)) / 1000;
        let restarts = self.restarts()?.at(now).in_window;
        Ok(Some(BreakerView {
            reason: format!(
                "the container answered no health check for {silent_s} s after {restarts} restarts within the hour; nothing is dispatched until it answers again or the hour ends"
            ),
            open_until: rfc3339(until),
        }))
    }
}
