//! `enroll create | list | revoke`: the operator's enrollment tokens.
//!
//! A token is shown once, when it is made; afterwards the parent knows it
//! only by its id and the key that checks proofs (`crate::registry::tokens`).

use serde::{Deserialize, Serialize};

use fleetls_proto::AgentKind;

use super::OpError;
use crate::registry::tokens::{self, TokenInfo};
use crate::registry::Registry;

/// Most agents one token may admit.
pub const MAX_USES: u64 = 1_000_000;
/// How long a token admits by default.
pub const DEFAULT_EXPIRES: &str = "1d";

/// What `enroll create` asks for; every field has a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The kinds it admits, `,`-separated: `child` (default), `mpos`,
    /// `local-parent`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The names it admits (`*`, `?` wildcards; default `*`).
    #[serde(default)]
    pub name: Option<String>,
    /// How many agents it may admit (default 1).
    #[serde(default)]
    pub uses: Option<u64>,
    /// How long it admits (`30m`, `12h`, `7d`; default 1d).
    #[serde(default)]
    pub expires: Option<String>,
}

/// A token just made: the only time the token itself is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    /// The token, to give to the devices it is for.
    pub token: String,
    /// What it admits.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// A token as listed: what it admits, its uses and which agents it admitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    /// What it admits and its uses.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// `usable`, `revoked`, `expired` or `used up`.
    pub state: String,
    /// The names of the agents it admitted, oldest first.
    pub admitted: Vec<String>,
}

/// Checks a request into what the token will admit, at `now` (ms).
pub fn check(request: &CreateRequest, now: u64) -> Result<TokenInfo, OpError> {
    let kinds = match request.kind.as_deref().map(str::trim) {
        None | Some("") => vec![AgentKind::Child],
        Some(text) => text
            .split(',')
            .map(|k| k.trim().parse::<AgentKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| {
                OpError::BadRequest(format!(
                    "--kind {text:?}: {why}; give child, mpos or local-parent, `,`-separated"
                ))
            })?,
    };
    let name_pattern = request.name.as_deref().unwrap_or("*").trim().to_owned();
    if name_pattern.is_empty()
        || name_pattern.chars().count() > crate::admission::MAX_NAME
        || name_pattern.chars().any(char::is_control)
    {
        return Err(OpError::BadRequest(format!(
            "--name: give a name pattern of 1 to {} printable characters (`*` and `?` as wildcards)",
            crate::admission::MAX_NAME
        )));
    }
    let max_uses = request.uses.unwrap_or(1);
    if !(1..=MAX_USES).contains(&max_uses) {
        return Err(OpError::BadRequest(format!(
            "--uses {max_uses}: give 1 to {MAX_USES} (one token may admit a whole roll-out)"
        )));
    }
    let expires = request.expires.as_deref().unwrap_or(DEFAULT_EXPIRES);
    let lifetime = crate::config::parse_lifetime(expires)
        .map_err(|why| OpError::BadRequest(format!("--expires {expires:?}: {why}")))?;
    Ok(TokenInfo {
        id: String::new(),
        kinds,
        name_pattern,
        max_uses,
        uses: 0,
        created_at: now,
        expires_at: now + lifetime.whole_milliseconds() as u64,
        revoked_at: None,
        last_used_at: None,
    })
}

/// Makes a token: kept by its id and checking key, shown once.
pub fn create(registry: &Registry, request: &CreateRequest) -> Result<Created, OpError> {
    let mut info = check(request, fleetls_proto::now_ms())?;
    let token = fleetls_bus::enroll::Token::generate();
    info.id = token.id().to_owned();
    registry
        .with_tx(|tx| tokens::insert(tx, &info, &token.mac_key()))
        .map_err(|e| OpError::Internal(e.to_string()))?;
    tracing::info!(
        token = %info.id,
        kinds = ?info.kinds,
        name = %info.name_pattern,
        uses = info.max_uses,
        "enrollment token created"
    );
    Ok(Created {
        token: token.reveal(),
        info,
    })
}

/// Every token with its state and the agents it admitted, newest first.
pub fn list(registry: &Registry) -> Result<Vec<Listed>, OpError> {
    let now = fleetls_proto::now_ms();
    registry
        .with_db(|db| {
            tokens::list(db)?
                .into_iter()
                .map(|info| {
                    Ok(Listed {
                        state: info.unusable(now).unwrap_or("usable").to_owned(),
                        admitted: tokens::admitted_by(db, &info.id)?,
                        info,
                    })
                })
                .collect()
        })
        .map_err(|e| OpError::Internal(e.to_string()))
}

/// Revokes a token by its id (or the whole token, from which the id is
/// read): it admits no one from now on; agents it admitted stay.
pub fn revoke(registry: &Registry, which: &str) -> Result<Listed, OpError> {
    let id = match which.trim().parse::<fleetls_bus::enroll::Token>() {
        Ok(token) => token.id().to_owned(),
        Err(_) => which.trim().to_ascii_lowercase(),
    };
    let found = registry
        .with_tx(|tx| tokens::revoke(tx, &id, fleetls_proto::now_ms()))
        .map_err(|e| OpError::Internal(e.to_string()))?;
    if !found {
        return Err(OpError::BadRequest(format!(
            "there is no enrollment token {:?}: `fleetls-parent enroll list` shows their ids",
            crate::admission::printable(&id, 40)
        )));
    }
    tracing::warn!(token = %id, "enrollment token revoked");
    list(registry)?
        .into_iter()
        .find(|t| t.info.id == id)
        .ok_or_else(|| OpError::Internal(format!("token {id} vanished")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_checked_before_a_token_is_made() {
        let ok = check(&CreateRequest::default(), 1_000).unwrap();
        assert_eq!(ok.kinds, vec![AgentKind::Child]);
        assert_eq!((ok.max_uses, ok.name_pattern.as_str()), (1, "*"));
        assert_eq!(ok.expires_at, 1_000 + 86_400_000);
        let many = check(
            &CreateRequest {
                kind: Some("child, mpos".into()),
                uses: Some(500),
                expires: Some("2h".into()),
                name: Some("till-*".into()),
            },
            0,
        )
        .unwrap();
        assert_eq!(many.kinds, vec![AgentKind::Child, AgentKind::Mpos]);
        for (bad, what) in [
            (
                CreateRequest {
                    kind: Some("robot".into()),
                    ..Default::default()
                },
                "--kind",
            ),
            (
                CreateRequest {
                    uses: Some(0),
                    ..Default::default()
                },
                "--uses",
            ),
            (
                CreateRequest {
                    expires: Some("soon".into()),
                    ..Default::default()
                },
                "--expires",
            ),
            (
                CreateRequest {
                    name: Some("a\nb".into()),
                    ..Default::default()
                },
                "--name",
            ),
        ] {
            let why = check(&bad, 0).unwrap_err().to_string();
            assert!(why.contains(what), "{why}");
        }
    }

    #[test]
    fn a_token_is_shown_once_and_listed_without_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.db")).unwrap();
        let made = create(&registry, &CreateRequest::default()).unwrap();
        let secret = made.token.rsplit('.').next().unwrap().to_owned();
        let listed = list(&registry).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, "usable");
        assert!(!serde_json::to_string(&listed).unwrap().contains(&secret));
        let revoked = revoke(&registry, &made.token).unwrap();
        assert_eq!(revoked.state, "revoked");
        assert!(revoke(&registry, "0000000000000000").is_err());
    }
}
