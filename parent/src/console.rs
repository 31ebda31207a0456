//! The web console ("SSL configuration" view), served by the admin server.
//!
//! The page, its script and its style sheet are plain files embedded in the
//! binary (`console/`); they are open, like any login page, and hold no data.
//! Everything the page shows comes from the token-protected JSON API: the
//! common routes of [`crate::admin`] plus the two here, which let the status
//! list stay fast on a network of tens of thousands of children:
//!
//! - `GET /api/agents?offset=&limit=&filter=&kind=&location=&q=`: one page of
//!   the status list, filtered and counted by SQLite, each agent shaped as in
//!   `status --json` ([`AgentStatus`]), with the broker node of each (`nodes`);
//! - `GET /api/locations`: the distinct locations, for the list's filter.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api_error::ApiError;
use crate::app::App;
use crate::registry::agent_reads::{self, PageFilter};
use crate::registry::{Registry, RegistryError};
use crate::status::{AgentStatus, ViewContext};
use fleetls_proto::AgentKind;

const PAGE: &str = include_str!("console/console.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The page may load only its own script and style and talk only to its own
/// origin; no other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'";

/// Agents per page when the request does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most agents one page may hold.
pub const MAX_LIMIT: usize = 1000;

/// Routes of the console: the page (open) and the API it needs beyond the
/// common one (behind the token). Merged into the admin router.
pub fn router(_app: Arc<App>) -> (Router, Router<Arc<App>>) {
    let page = Router::new()
        .route("/", get(|| asset(PAGE, "text/html; charset=utf-8")))
        .route(
            "/console.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        );
    let api = Router::new()
        .route("/api/agents", get(agents))
        .route("/api/locations", get(locations_route));
    (page, api)
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Which agents a page of the status list holds (its SQL is the
/// registry's).
pub use crate::registry::agent_reads::Filter;

/// The query of one page, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Agents skipped (ordered by name, then id).
    pub offset: usize,
    /// Most agents returned (1..=[`MAX_LIMIT`]).
    pub limit: usize,
    /// Which agents.
    pub filter: Filter,
    /// Only this kind.
    pub kind: Option<AgentKind>,
    /// Only this location (exact).
    pub location: Option<String>,
    /// Only names (or ids) containing this, case-insensitive.
    pub q: Option<String>,
}

/// The query string of `GET /api/agents`, as given (checked into [`PageQuery`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawPageQuery {
    /// Agents skipped.
    pub offset: Option<String>,
    /// Most agents returned.
    pub limit: Option<String>,
    /// `all`, `failed`, `offline`, ...
    pub filter: Option<String>,
    /// `child`, `local-parent` or `mpos`.
    pub kind: Option<String>,
    /// A location.
    pub location: Option<String>,
    /// A name substring.
    pub q: Option<String>,
}

impl RawPageQuery {
    /// Checks every value; the message names the parameter that is wrong.
    pub fn check(&self) -> Result<PageQuery, String> {
        let number = |name: &str, text: &Option<String>, default: usize| match text
            .as_deref()
            .map(str::trim)
        {
            None | Some("") => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .map_err(|_| format!("{name} {text:?} is not a whole number")),
        };
        let limit = number("limit", &self.limit, DEFAULT_LIMIT)?;
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!("limit must be 1 to {MAX_LIMIT}"));
        }
        let given = |text: &Option<String>| {
            text.as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        let kind = match given(&self.kind).as_deref() {
            None | Some("all") => None,
            Some(text) => Some(text.parse::<AgentKind>().map_err(|_| {
                format!("kind {text:?} is unknown: give child, local-parent or mpos")
            })?),
        };
        Ok(PageQuery {
            offset: number("offset", &self.offset, 0)?,
            limit,
            filter: self.filter.as_deref().unwrap_or("").trim().parse()?,
            kind,
            location: given(&self.location),
            q: given(&self.q),
        })
    }
}

/// One page of the status list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentsPage {
    /// Agents matching the filters, on every page.
    pub total: usize,
    /// Agents skipped.
    pub offset: usize,
    /// Most agents on this page.
    pub limit: usize,
    /// This page's agents, shaped as in `status --json`.
    pub agents: Vec<AgentStatus>,
    /// The broker node of each agent of this page that has a connection of
    /// its own, by id, as management last showed it (with `--management`;
    /// see [`crate::cluster`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub nodes: std::collections::BTreeMap<uuid::Uuid, String>,
}

/// One page of the status list, filtered and counted by SQLite.
pub fn page(
    registry: &Registry,
    context: ViewContext,
    query: &PageQuery,
) -> Result<AgentsPage, RegistryError> {
    let selection = PageFilter {
        filter: query.filter,
        kind: query.kind,
        location: query.location.as_deref(),
        q: query.q.as_deref(),
        cutoff_ms: context.cutoff_ms(),
    }
    .selection();
    crate::status::read(registry, |db| {
        let total = agent_reads::count(db, &selection)?;
        let page = selection.page(query.limit, query.offset);
        let agents = crate::status::agents_where(db, context, &page.clause, &page.binds)?;
        Ok(AgentsPage {
            total,
            offset: query.offset,
            limit: query.limit,
            agents,
            nodes: Default::default(),
        })
    })
}

/// Every distinct location, sorted.
pub fn locations(registry: &Registry) -> Result<Vec<String>, RegistryError> {
    registry.with_db(agent_reads::locations)
}

async fn agents(
    State(app): State<Arc<App>>,
    query: Result<Query<RawPageQuery>, QueryRejection>,
) -> Result<Json<AgentsPage>, ApiError> {
    let Query(raw) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let query = raw
        .check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let context = ViewContext::new(app.config.min_ssl_version, app.liveness());
    let registry_app = app.clone();
    let mut page =
        tokio::task::spawn_blocking(move || page(&registry_app.registry, context, &query))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(view) = app.cluster_view() {
        page.nodes = page
            .agents
            .iter()
            .filter_map(|a| view.agents.get(&a.id).map(|node| (a.id, node.clone())))
            .collect();
    }
    Ok(Json(page))
}

async fn locations_route(State(app): State<Arc<App>>) -> Result<Json<Vec<String>>, ApiError> {
    tokio::task::spawn_blocking(move || locations(&app.registry))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Version;
    use crate::registry::test_support::*;
    use uuid::Uuid;

    const MIN: Version = Version(1, 0, 0);
    const NOW: u64 = 1_000_000_000;

    fn context() -> ViewContext {
        ViewContext {
            now_ms: NOW,
            liveness: crate::status::Liveness::heard_within(30_000),
            min_ssl_version: MIN,
        }
    }

    /// Inserts an agent row the way the registry stores it.
    fn agent(registry: &Registry, name: &str, kind: &str, location: &str, online: bool) -> Uuid {
        let id = Uuid::new_v4();
        let seen = if online { NOW - 1_000 } else { NOW - 60_000 };
        let row = AgentRow {
            id,
            name,
            kind,
            version: "1.0.0",
            location,
            hostnames: "[]",
            ips: "[]",
            last_seen: seen as i64,
            has_certificate: false,
        };
        registry.with_db(|db| insert_agent_row(db, &row)).unwrap();
        id
    }

    fn campaign(registry: &Registry, kind: &str, started: i64, children: &[(Uuid, &str)]) -> Uuid {
        registry
            .with_tx(|db| {
                let id = insert_finished_campaign(db, kind, started)?;
                for (seq, (agent, state)) in children.iter().enumerate() {
                    insert_campaign_child(db, id, *agent, seq, state, "localhost")?;
                    insert_step_result(
                        db,
                        &StepResultRow {
                            campaign: id,
                            agent: *agent,
                            step: "cert-test",
                            ok: true,
                            message: "Certificates generated successfully!",
                            at: started,
                            late: false,
                        },
                    )?;
                }
                Ok(id)
            })
            .unwrap()
    }

    fn query(text: &str) -> PageQuery {
        let raw: RawPageQuery = serde_json::from_value(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_owned(), serde_json::Value::String(v.to_owned()))
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
        )
        .unwrap();
        raw.check().unwrap()
    }

    fn names(page: &AgentsPage) -> Vec<&str> {
        page.agents.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn pages_are_filtered_counted_and_ordered_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let a = agent(&registry, "till-a", "child", "shop-1", true);
        let b = agent(&registry, "till-b", "child", "shop-2", false);
        let c = agent(&registry, "lp-1", "local-parent", "shop-1", true);
        let _d = agent(&registry, "mpos-1", "mpos", "shop-2", true);
        let old = campaign(&registry, "verify", 10, &[(a, "failed"), (b, "passed")]);
        let new = campaign(&registry, "reverify", 20, &[(a, "passed")]);
        // A switch campaign is not a test: it does not change the last result.
        campaign(&registry, "switch", 30, &[(b, "failed"), (c, "failed")]);

        let all = page(&registry, context(), &query("")).unwrap();
        assert_eq!(all.total, 4);
        assert_eq!(names(&all), ["lp-1", "mpos-1", "till-a", "till-b"]);
        let till_a = &all.agents[2];
        let last = till_a.last_result.as_ref().unwrap();
        assert_eq!((last.campaign, last.kind.as_str()), (new, "reverify"));
        assert_eq!(last.state, crate::campaign::ChildState::Passed);
        assert_eq!(
            last.cert_test.as_ref().unwrap().message,
            "Certificates generated successfully!"
        );
        assert_eq!(all.agents[3].last_result.as_ref().unwrap().campaign, old);
        assert!(all.agents[0].last_result.is_none(), "switch is not a test");
        assert!(till_a.online && !all.agents[3].online);
        assert!(till_a.ssl_capable);

        let count = |q: &str| page(&registry, context(), &query(q)).unwrap();
        assert_eq!(names(&count("filter=passed")), ["till-a", "till-b"]);
        assert_eq!(count("filter=failed").total, 0);
        assert_eq!(names(&count("filter=not-tested")), ["lp-1", "mpos-1"]);
        assert_eq!(names(&count("filter=offline")), ["till-b"]);
        assert_eq!(count("filter=online").total, 3);
        assert_eq!(count("filter=no-certificate").total, 4);
        assert_eq!(names(&count("kind=local-parent")), ["lp-1"]);
        assert_eq!(names(&count("location=shop-1&kind=child")), ["till-a"]);
        assert_eq!(names(&count("q=TILL")), ["till-a", "till-b"]);
        assert_eq!(names(&count("q=ill-b&filter=offline")), ["till-b"]);
        let second = count("limit=2&offset=2");
        assert_eq!(
            (second.total, names(&second)),
            (4, vec!["till-a", "till-b"])
        );
        assert_eq!(count("offset=10").agents.len(), 0);
        assert_eq!(
            locations(&registry).unwrap(),
            ["shop-1".to_owned(), "shop-2".to_owned()]
        );
    }

    #[test]
    fn the_registry_pages_through_the_agents_of_the_status_list_in_its_order() {
        assert_eq!(agent_reads::AGENTS_FROM, crate::status::AGENTS_FROM);
        assert_eq!(agent_reads::AGENTS_ORDER, crate::status::AGENTS_ORDER);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let check = |raw: RawPageQuery| raw.check().unwrap_err();
        assert!(check(RawPageQuery {
            limit: Some("0".into()),
            ..Default::default()
        })
        .contains("limit"));
        assert!(check(RawPageQuery {
            offset: Some("-1".into()),
            ..Default::default()
        })
        .contains("offset"));
        assert!(check(RawPageQuery {
            filter: Some("broken".into()),
            ..Default::default()
        })
        .contains("filter"));
        assert!(check(RawPageQuery {
            kind: Some("till".into()),
            ..Default::default()
        })
        .contains("kind"));
        let ok = RawPageQuery::default().check().unwrap();
        assert_eq!(
            (ok.offset, ok.limit, ok.filter),
            (0, DEFAULT_LIMIT, Filter::All)
        );
    }

    #[test]
    fn pages_of_ten_thousand_agents_hold_the_right_agents() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let mut ids = Vec::new();
        registry
            .with_tx(|tx| {
                for i in 0..10_000 {
                    let id = Uuid::new_v4();
                    let (name, location) = (format!("till-{i:05}"), format!("shop-{}", i % 100));
                    insert_agent_row(
                        tx,
                        &AgentRow {
                            id,
                            name: &name,
                            kind: "child",
                            version: "1.0.0",
                            location: &location,
                            hostnames: "[]",
                            ips: "[]",
                            last_seen: NOW as i64,
                            has_certificate: false,
                        },
                    )?;
                    ids.push(id);
                }
                Ok(())
            })
            .unwrap();
        let states: Vec<(Uuid, &str)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, if i % 10 == 0 { "failed" } else { "passed" }))
            .collect();
        campaign(&registry, "verify", 10, &states);
        // How fast: `cargo run --release -p fleetls-parent --example
        // status_timing` on a registry this size.
        let failed = page(&registry, context(), &query("filter=failed&limit=100")).unwrap();
        assert_eq!((failed.total, failed.agents.len()), (1_000, 100));
        let expected: Vec<String> = (0..1_000)
            .step_by(10)
            .map(|i| format!("till-{i:05}"))
            .collect();
        assert_eq!(names(&failed), expected);
        let shop = page(&registry, context(), &query("location=shop-7&offset=50")).unwrap();
        assert_eq!((shop.total, shop.agents.len()), (100, 50));
        let expected: Vec<String> = (50..100)
            .map(|n| format!("till-{:05}", 7 + 100 * n))
            .collect();
        assert_eq!(names(&shop), expected);
    }
}
