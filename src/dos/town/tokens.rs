//! The town's tokens: the container-token generation (rotation and what a credential may
//! still do), minting container and gateway tokens, pushing them to the container (the
//! throttle and the generation it accepted), and starting the container with fresh tokens,
//! the env and the settings files derived from the config.

use super::{gone_is_not_found, store, Meta, TownDO};
use crate::config;
use crate::storage::{bump_meta, meta, set_meta};
use gastown_core::agent_settings::{settings_files, SettingsFiles};
use gastown_core::auth::{sign_container, sign_sandbox};
use gastown_core::authz::ContainerCredential;
use gastown_core::control::GIT_TOKEN_MARGIN_ENV;
use gastown_core::error::ApiError;
use gastown_core::model::Town;
use gastown_core::policy::TokenGeneration;
use gastown_core::protocol::container::{self as c, PushToken, TokenPushed};
use gastown_core::town_config::{container_env, TownConfig};
use std::collections::BTreeMap;
use worker::console_error;

type Reply<T> = Result<T, ApiError>;

impl TownDO {
    /// Mints a gateway (sandbox) token for the town's owner (the creator for org towns), with
    /// the org for org towns, and stores it sealed as the town's `kilocode_token`.
    pub(super) fn mint_gateway(&self, town: &Town) -> Reply<(String, i64)> {
        let (token, exp) = sign_sandbox(
            &config::get(&self.env).keys,
            town.token_user_id()?,
            &town.id,
            town.owner.org(),
            config::now_s(),
            config::get(&self.env).lifetimes.gateway_s,
        )
        .map_err(|e| ApiError::internal(format!("minting a gateway token: {}", e.message())))?;
        let mut config = self.config(&town.id)?;
        config.kilocode_token = Some(token.clone());
        self.store_config(&town.id, &config)?;
        set_meta(
            &self.sql(),
            Meta::GatewayMintedExpiresAt,
            u64::try_from(exp).unwrap_or(0),
        )?;
        Ok((token, exp))
    }

    /// The alarm's gateway refresh: a fresh token into the config and out to the container in
    /// its env. The recorded expiry moves only when the container accepted it.
    pub(super) async fn refresh_gateway(&self, town: &Town) -> Reply<bool> {
        let (_, exp) = self.mint_gateway(town)?;
        let config = self.config(&town.id)?;
        let pushed = self.sync_env(town, &config).await;
        self.still_here()?;
        let sql = self.sql();
        if pushed {
            set_meta(
                &sql,
                Meta::GatewayExpiresAt,
                u64::try_from(exp).unwrap_or(0),
            )?;
            bump_meta(&sql, Meta::GatewayRefreshes)?;
        } else {
            bump_meta(&sql, Meta::GatewayRefreshFailures)?;
        }
        Ok(pushed)
    }

    /// Starts the container with fresh gateway and container tokens, the current env and the
    /// settings files. Nothing else of the town runs with older tokens after this.
    pub(super) async fn push_start(&self, town: &Town) -> Reply<TokenPushed> {
        if self.generation()?.current == 0 {
            self.advance_generation()?;
        }
        let (_, gateway_exp) = self.mint_gateway(town)?;
        let (env, settings) = self.container_payload(&self.config(&town.id)?)?;
        let generation = self.generation()?.current;
        let (token, expires_at) = self.mint(town)?;
        let start = c::Start {
            town_id: town.id.clone(),
            token,
            expires_at,
            env,
            settings,
        };
        let pushed = self
            .container(&town.id)?
            .call(start)
            .await
            .map_err(gone_is_not_found)?;
        self.still_here()?;
        if self.stored_status()?.is_stopped() {
            // The town was stopped while this start was on its way, and the stop may have
            // reached the container first: stop it again, so nothing runs for a stopped town.
            self.container(&town.id)?
                .call(c::Stop {
                    town_id: town.id.clone(),
                })
                .await
                .map_err(gone_is_not_found)?;
            return Err(ApiError::TownStopped);
        }
        self.record_push(pushed, generation)?;
        if pushed.accepted {
            let sql = self.sql();
            set_meta(&sql, Meta::ContainerStarted, 1)?;
            set_meta(&sql, Meta::WorkSeenAt, config::now_ms())?;
            set_meta(
                &sql,
                Meta::GatewayExpiresAt,
                u64::try_from(gateway_exp).unwrap_or(0),
            )?;
        }
        Ok(pushed)
    }

    pub(super) fn generation(&self) -> Reply<TokenGeneration> {
        let sql = self.sql();
        Ok(TokenGeneration {
            current: meta(&sql, Meta::TokenGeneration)?.unwrap_or(0),
            since_ms: meta(&sql, Meta::TokenGenerationSince)?.unwrap_or(0),
        })
    }

    pub(super) fn set_generation(&self, generation: TokenGeneration) -> Reply<()> {
        let sql = self.sql();
        set_meta(&sql, Meta::TokenGeneration, generation.current)?;
        set_meta(&sql, Meta::TokenGenerationSince, generation.since_ms)
    }

    /// Rotation: tokens of older generations stop working after the grace.
    pub(super) fn advance_generation(&self) -> Reply<()> {
        self.set_generation(self.generation()?.advanced(config::now_ms()))
    }

    /// A container route's credential against the current generation.
    pub(super) fn admit(&self, credential: ContainerCredential) -> Reply<()> {
        let grace = config::get(&self.env).token_grace_ms;
        if self
            .generation()?
            .admits(credential, config::now_ms(), grace)
        {
            Ok(())
        } else {
            Err(ApiError::TokenRevoked)
        }
    }

    /// A credential that asks to mint a token: only the current generation (see
    /// `TokenGeneration::may_mint`); a token the grace still admits gets `token_revoked` too.
    pub(super) fn admit_minting(&self, credential: ContainerCredential) -> Reply<()> {
        if self.generation()?.may_mint(credential) {
            Ok(())
        } else {
            Err(ApiError::TokenRevoked)
        }
    }

    pub(super) fn container_started(&self) -> Reply<bool> {
        Ok(meta(&self.sql(), Meta::ContainerStarted)?.unwrap_or(0) == 1)
    }

    /// A container token for `town` of the current generation, carrying its owner's identity
    /// (the creator for org towns, the town id if none is recorded).
    pub(super) fn mint(&self, town: &Town) -> Reply<(String, i64)> {
        sign_container(
            &config::get(&self.env).keys,
            &town.id,
            town.token_user_id()?,
            self.generation()?.current,
            config::now_s(),
            config::get(&self.env).lifetimes.container_s,
        )
        .map_err(|e| ApiError::internal(format!("minting a container token: {}", e.message())))
    }

    /// Mints a token and pushes it to the running container. The throttle moves only when the
    /// container accepted it.
    pub(super) async fn refresh_token(&self, town: &Town) -> Reply<TokenPushed> {
        let generation = self.generation()?.current;
        let (token, expires_at) = self.mint(town)?;
        let pushed = self
            .container(&town.id)?
            .call(PushToken {
                town_id: town.id.clone(),
                token,
                expires_at,
            })
            .await
            .map_err(gone_is_not_found)?;
        self.still_here()?;
        self.record_push(pushed, generation)?;
        Ok(pushed)
    }

    /// Records a push of a token of `generation`.
    pub(super) fn record_push(&self, pushed: TokenPushed, generation: u64) -> Reply<()> {
        let sql = self.sql();
        if pushed.restarted {
            // The container lost everything since the last push: its agents are gone.
            self.reset_after_eviction("its container was evicted or restarted")?;
        }
        if pushed.accepted {
            self.container_answered(config::now_ms())?;
            set_meta(&sql, Meta::TokenAcceptedGeneration, generation)?;
            set_meta(&sql, Meta::TokenRefreshedAt, config::now_ms())?;
            bump_meta(&sql, Meta::TokenRefreshes)
        } else {
            bump_meta(&sql, Meta::TokenRefreshFailures)
        }
    }

    /// The env the container and its agents run with, derived from `config`.
    pub(super) fn container_env(&self, config: &TownConfig) -> BTreeMap<String, String> {
        let mut env = container_env(config);
        let settings = config::get(&self.env);
        if let Some(url) = &settings.gateway_url {
            env.insert("KILO_GATEWAY_URL".to_owned(), url.clone());
        }
        // The credential helper stops reusing a git token this long before it expires.
        env.insert(
            GIT_TOKEN_MARGIN_ENV.to_owned(),
            settings.git_token_margin_s.to_string(),
        );
        env
    }

    /// What the container runs with: the env derived from `config`, and the agents' settings
    /// files for the town and each of its rigs.
    pub(super) fn container_payload(
        &self,
        config: &TownConfig,
    ) -> Reply<(BTreeMap<String, String>, SettingsFiles)> {
        let rigs = store::rig_ids(&self.sql())?;
        Ok((
            self.container_env(config),
            settings_files(config, rigs.iter().map(String::as_str)),
        ))
    }

    /// Hands the env and settings derived from `config` to the container DO. The config is
    /// already stored, so a failure is logged and answered `false`, not returned: the next
    /// start pushes the stored env.
    pub(super) async fn sync_env(&self, town: &Town, config: &TownConfig) -> bool {
        let result = match self.container_payload(config) {
            Ok((env, settings)) => match self.container(&town.id) {
                Ok(stub) => {
                    stub.call(c::SyncEnv {
                        town_id: town.id.clone(),
                        env,
                        settings,
                    })
                    .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(synced) => synced.pushed,
            Err(e) => {
                console_error!("town {}: env sync failed: {e}", town.id);
                false
            }
        }
    }
}
