//! The support console at `/ui` (issue #6): server-rendered HTML (maud escapes every
//! interpolated value), one embedded stylesheet and script, nothing fetched from
//! outside. Read-only unless the daemon config names an acknowledgement token
//! (`[ui] ack_token_env`); acknowledging then needs that token in the form.
//!
//! Pages: findings list (filters, paging), finding (evidence, links, acknowledge), item
//! (provenance timeline, fork highlighted, copies, taint), account (balance history),
//! search (item, account or transaction id).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::adapters::journal::{AccountQuery, FindingFilter, FindingRow, Journal, item_report};
use crate::core::provenance::fmt_ts_us as ts;

const CSS: &str = include_str!("ui/app.css");
const JS: &str = include_str!("ui/app.js");
/// Findings per console page.
const PAGE_SIZE: i64 = 50;
/// Balance-history rows an account page shows (the newest); the CLI's JSON has all.
const HISTORY_ROWS_MAX: i64 = 500;
/// Longest id, filter value or form field the console accepts (events-v1 ids are far
/// shorter); anything longer is refused before it reaches PostgreSQL.
const FIELD_BYTES_MAX: usize = 512;

/// What the console needs: the journal reader and the acknowledgement token.
pub struct Ui {
    pub journal: Journal,
    pub ack_token: Option<String>,
}

pub fn routes<S: Clone + Send + Sync + 'static>(ui: Arc<Ui>) -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/findings") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/findings") }))
        .route("/ui/findings", get(findings_page))
        .route("/ui/findings/{fp}", get(finding_page))
        .route("/ui/findings/{fp}/ack", post(ack))
        .route("/ui/item", get(item_page))
        .route("/ui/account", get(account_page))
        .route("/ui/search", get(search))
        .route(
            "/ui/assets/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route(
            "/ui/assets/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    JS,
                )
            }),
        )
        .with_state(ui)
}

/// An error page with its status.
type ErrorPage = (StatusCode, Html<String>);
/// A page, or an error page.
type PageResult = Result<Response, ErrorPage>;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · assayer" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui/findings" { "assayer" }
                    nav { a href="/ui/findings" { "Findings" } }
                    form.search action="/ui/search" method="get" {
                        input #search name="q" type="search" placeholder="item, account or tx id" required;
                        button type="submit" { "Search" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> ErrorPage {
    (
        status,
        Html(
            layout(
                status.canonical_reason().unwrap_or("Error"),
                html! { p.error #error { (message.to_string()) } },
            )
            .into_string(),
        ),
    )
}

fn internal(e: impl std::fmt::Display) -> ErrorPage {
    tracing::warn!(error = %e, "support console query failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the database did not answer: {e}"),
    )
}

fn page(m: Markup) -> Response {
    Html(m.into_string()).into_response()
}

fn check_len(what: &str, v: &str) -> Result<(), ErrorPage> {
    if v.len() > FIELD_BYTES_MAX {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{what} is longer than {FIELD_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn empty_none(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn url_with(base: &str, pairs: &[(&str, &str)]) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()))
        .finish();
    if q.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{q}")
    }
}

fn item_url(realm: &str, item: &str) -> String {
    url_with("/ui/item", &[("realm", realm), ("id", item)])
}

fn account_url(realm: &str, account: &str) -> String {
    url_with("/ui/account", &[("realm", realm), ("id", account)])
}

fn finding_url(fp: &str) -> String {
    format!(
        "/ui/findings/{}",
        form_urlencoded::byte_serialize(fp.as_bytes()).collect::<String>()
    )
}

// ----- findings ------------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
struct ListQuery {
    severity: Option<String>,
    invariant: Option<String>,
    system: Option<String>,
    realm: Option<String>,
    status: Option<String>,
    page: Option<i64>,
}

async fn findings_page(State(ui): State<Arc<Ui>>, Query(q): Query<ListQuery>) -> PageResult {
    for v in [&q.severity, &q.invariant, &q.system, &q.realm, &q.status]
        .into_iter()
        .flatten()
    {
        check_len("a filter", v)?;
    }
    let filter = FindingFilter {
        severity: empty_none(&q.severity),
        invariant: empty_none(&q.invariant),
        system: empty_none(&q.system),
        realm: empty_none(&q.realm),
        status: empty_none(&q.status),
        ..FindingFilter::default()
    };
    filter
        .validate()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let page_no = q.page.unwrap_or(1).max(1);
    let total = ui.journal.count_findings(&filter).await.map_err(internal)?;
    let rows = ui
        .journal
        .findings(&filter, PAGE_SIZE, (page_no - 1).saturating_mul(PAGE_SIZE))
        .await
        .map_err(internal)?;
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let f = |o: &Option<String>| o.clone().unwrap_or_default();
    let (sev, inv, sys, realm, status) = (
        f(&filter.severity),
        f(&filter.invariant),
        f(&filter.system),
        f(&filter.realm),
        f(&filter.status),
    );
    let link = |p: i64| {
        let p = p.to_string();
        url_with(
            "/ui/findings",
            &[
                ("severity", &sev),
                ("invariant", &inv),
                ("system", &sys),
                ("realm", &realm),
                ("status", &status),
                ("page", &p),
            ],
        )
    };
    let select = |name: &str, options: &[&str], current: &str| {
        html! {
            select name=(name) {
                option value="" { "any " (name) }
                @for o in options {
                    option value=(o) selected[*o == current] { (o) }
                }
            }
        }
    };
    let body = html! {
        form.filters #filters method="get" action="/ui/findings" {
            (select("severity", &crate::adapters::journal::SEVERITIES, &sev))
            (select("status", &crate::adapters::journal::STATUSES, &status))
            input name="invariant" placeholder="invariant" value=(inv);
            input name="system" placeholder="system" value=(sys);
            input name="realm" placeholder="realm" value=(realm);
            button type="submit" { "Filter" }
        }
        p.count { (total) " findings · page " (page_no) " of " (pages) }
        table #findings {
            thead { tr { th { "severity" } th { "invariant" } th { "realm" } th { "system" } th { "tx" } th { "subject" } th { "status" } th { "detected" } } }
            tbody {
                @for r in &rows {
                    tr class={ "sev-" (r.severity) } {
                        td { span class={ "badge sev-" (r.severity) } { (r.severity) } }
                        td { a.finding-link href=(finding_url(&r.fingerprint)) { (r.invariant) } }
                        td { (r.realm) }
                        td { (r.system.clone().unwrap_or_default()) }
                        td { (r.tx_id.clone().unwrap_or_default()) }
                        td { (r.subject.clone().unwrap_or_default()) }
                        td { span class={ "status status-" (r.status) } { (r.status) } }
                        td { (r.detected_at) }
                    }
                }
            }
        }
        nav.paging {
            @if page_no > 1 { a rel="prev" href=(link(page_no - 1)) { "← newer" } }
            @if page_no < pages { a rel="next" href=(link(page_no + 1)) { "older →" } }
        }
    };
    Ok(page(layout("Findings", body)))
}

/// Where a finding's subject leads: an item page, an account page, or nowhere.
fn subject_link(f: &FindingRow) -> Option<String> {
    let s = f.subject.as_deref()?;
    if f.invariant.starts_with("item.") {
        Some(item_url(&f.realm, s))
    } else if f.invariant.starts_with("balance.") || f.invariant == "economy.velocity" {
        Some(account_url(&f.realm, s))
    } else {
        None
    }
}

async fn finding_page(State(ui): State<Arc<Ui>>, Path(fp): Path<String>) -> PageResult {
    check_len("the fingerprint", &fp)?;
    let f = ui.journal.finding(&fp).await.map_err(|e| match e {
        crate::adapters::journal::JournalError::NoFinding(_)
        | crate::adapters::journal::JournalError::Ambiguous { .. } => {
            error(StatusCode::NOT_FOUND, e)
        }
        e => internal(e),
    })?;
    let evidence = serde_json::to_string_pretty(&f.evidence).unwrap_or_default();
    let body = html! {
        dl.finding #finding {
            dt { "fingerprint" } dd.mono { (f.fingerprint) }
            dt { "invariant" } dd { (f.invariant) " " span class={ "badge sev-" (f.severity) } { (f.severity) } }
            dt { "message" } dd { (f.message) }
            dt { "realm" } dd { (f.realm) }
            dt { "system" } dd { (f.system.clone().unwrap_or_default()) }
            dt { "transaction" } dd {
                @if let Some(tx) = &f.tx_id { a href=(url_with("/ui/search", &[("q", tx)])) { (tx) } }
            }
            dt { "subject" } dd {
                @if let Some(s) = &f.subject {
                    @if let Some(link) = subject_link(&f) { a #subject-link href=(link) { (s) } } @else { (s) }
                }
            }
            dt { "detected" } dd { (f.detected_at) }
            dt { "seen" } dd { (f.occurrences) "× (first " (f.first_seen) ", last " (f.last_seen) ")" }
            dt { "status" } dd { span #status class={ "status status-" (f.status) } { (f.status) }
                @if let Some(by) = &f.status_by { " by " span #status-by { (by) } " at " (f.status_at.clone().unwrap_or_default()) ": " span #status-reason { (f.status_reason.clone().unwrap_or_default()) } }
            }
        }
        h2 { "Evidence" }
        pre.evidence #evidence { (evidence) }
        @if f.status != "resolved" {
            h2 { "Acknowledge" }
            @if ui.ack_token.is_none() {
                p.readonly { "This console is read-only: the daemon config names no acknowledgement token ([ui] ack_token_env)." }
            }
            form.ack #ack method="post" action=(format!("{}/ack", finding_url(&f.fingerprint))) {
                label { "your name " input name="by" required maxlength="200"; }
                label { "reason " input name="reason" required maxlength="500"; }
                label { "token " input name="token" type="password" autocomplete="off"; }
                button type="submit" { "Acknowledge" }
            }
        }
    };
    Ok(page(layout(
        &format!(
            "Finding {}",
            &f.fingerprint.get(..12).unwrap_or(&f.fingerprint)
        ),
        body,
    )))
}

#[derive(Debug, Deserialize)]
struct AckForm {
    by: String,
    reason: String,
    #[serde(default)]
    token: String,
}

async fn ack(
    State(ui): State<Arc<Ui>>,
    Path(fp): Path<String>,
    Form(form): Form<AckForm>,
) -> PageResult {
    check_len("the fingerprint", &fp)?;
    check_len("the name", &form.by)?;
    check_len("the reason", &form.reason)?;
    check_len("the token", &form.token)?;
    let Some(token) = &ui.ack_token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "acknowledging is disabled: this console is read-only (no [ui] ack_token_env in the daemon config)",
        ));
    };
    if !bool::from(form.token.as_bytes().ct_eq(token.as_bytes())) {
        tracing::warn!(fingerprint = %fp, "console acknowledgement refused: wrong token");
        return Err(error(
            StatusCode::FORBIDDEN,
            "acknowledgement refused: wrong token",
        ));
    }
    let f = ui
        .journal
        .ack(&fp, form.by.trim(), form.reason.trim())
        .await
        .map_err(|e| match e {
            crate::adapters::journal::JournalError::Db(_) => internal(e),
            e => error(StatusCode::BAD_REQUEST, e),
        })?;
    tracing::info!(fingerprint = %f.fingerprint, by = %form.by.trim(), "finding acknowledged from the console");
    Ok(Redirect::to(&finding_url(&f.fingerprint)).into_response())
}

// ----- item, account, search -------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct IdQuery {
    id: String,
    realm: Option<String>,
    asset: Option<String>,
}

async fn item_page(State(ui): State<Arc<Ui>>, Query(q): Query<IdQuery>) -> PageResult {
    check_len("the item id", &q.id)?;
    let realm = empty_none(&q.realm);
    let r = item_report(&ui.journal, realm.as_deref(), &q.id)
        .await
        .map_err(internal)?;
    let t = &r.trace;
    if t.steps.is_empty() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("item {} is not in the journal", q.id),
        ));
    }
    let body = html! {
        p.summary { (t.steps.len()) " moves · " (t.copies.len()) " copies (" (t.live_copies().count()) " live)" }
        @match t.fork_point() {
            None => { p.nofork #fork-summary { "No fork: one copy all along." } }
            Some(f) => {
                div.fork-summary #fork-summary {
                    strong { "Fork point: " } span #fork-tx { (f.tx_id) } " — " (f.kind.as_str())
                    ": copy " (f.copy) " came from copy " (f.parent) ". Flagged by: "
                    @for x in r.fork_findings.iter().filter(|x| x.tx_id.as_deref() == Some(f.tx_id.as_str())) {
                        a.fork-finding href=(finding_url(&x.fingerprint)) { (x.invariant) } " "
                    }
                }
            }
        }
        h2 { "Provenance timeline" }
        table #timeline {
            thead { tr { th { "#" } th { "ts" } th { "tx" } th { "realm" } th { "system" } th { "kind" } th { "actor" } th { "from → to" } th { "copy" } } }
            tbody {
                @for (i, s) in t.steps.iter().enumerate() {
                    @let fork = t.forks.iter().find(|f| f.step == i);
                    tr class=[fork.map(|_| "fork")] data-tx=(s.tx_id) {
                        td { (i + 1) }
                        td { (ts(s.ts_us)) }
                        td { (s.tx_id) @if let Some(f) = fork { " " span.fork-badge { "FORK · " (f.kind.as_str()) } } }
                        td { (s.realm) }
                        td { (s.system) }
                        td { (s.kind) }
                        td { @if let Some(a) = &s.actor { a href=(account_url(&s.realm, a)) { (a) } } }
                        td { (s.from) " → " (s.to) }
                        td { (t.step_copy[i]) }
                    }
                }
            }
        }
        h2 { "Copies" }
        table #copies {
            thead { tr { th { "copy" } th { "forked from" } th { "born in" } th { "where now" } } }
            tbody {
                @for c in &t.copies {
                    tr class=[c.parent.map(|_| "fork")] {
                        td { (c.id) }
                        td { (c.parent.map(|p| p.to_string()).unwrap_or_else(|| "-".into())) }
                        td { (t.steps[c.born_step].tx_id) }
                        td { @if c.burned { "burned (" (c.location) ")" } @else { (c.location) } }
                    }
                }
            }
        }
        @if !t.taint.is_empty() {
            h2 { "Taint (from the fork on)" }
            table #taint {
                thead { tr { th { "tx" } th { "copy" } th { "from" } th { "received by" } th { "same transaction's postings" } } }
                tbody {
                    @for x in &t.taint {
                        tr {
                            td { (x.tx_id) }
                            td { (x.copy) }
                            td { (x.from_owner) }
                            td { a href=(account_url(&t.steps[x.step].realm, &x.receiver)) { (x.receiver) } }
                            td { @for (a, asset, d) in &x.postings { (a) " " (format!("{d:+}")) " " (asset) br; } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(layout(&format!("Item {}", q.id), body)))
}

async fn account_page(State(ui): State<Arc<Ui>>, Query(q): Query<IdQuery>) -> PageResult {
    check_len("the account id", &q.id)?;
    let realm = empty_none(&q.realm);
    let asset = empty_none(&q.asset);
    let t = ui
        .journal
        .account(&AccountQuery {
            realm: realm.as_deref(),
            asset: asset.as_deref(),
            history: HISTORY_ROWS_MAX,
            counterparties: 50,
            ..AccountQuery::new(&q.id)
        })
        .await
        .map_err(internal)?;
    if t.postings == 0 {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("account {} has no postings in the journal", q.id),
        ));
    }
    let body = html! {
        p.summary #balances { (t.postings) " postings · balances: "
            @for b in &t.balances { span.balance { (b.balance) " " (b.asset) " (" (b.realm) ")" } " " } }
        @for p in &t.below_zero {
            p.below-zero { "Below zero at " (p.row.tx_id) " (" (ts(p.row.ts_us)) "): " (format!("{:+}", p.row.delta)) " " (p.row.asset) " → " (p.balance) }
        }
        h2 { "Balance history" @if (t.history.len() as u64) < t.postings { " (newest " (t.history.len()) " of " (t.postings) ")" } }
        table #history {
            thead { tr { th { "ts" } th { "tx" } th { "system" } th { "kind" } th { "asset" } th { "delta" } th { "balance" } } }
            tbody {
                @for p in &t.history {
                    tr class=[t.crossed_at(&p.row).then_some("fork")] {
                        td { (ts(p.row.ts_us)) } td { (p.row.tx_id) } td { (p.row.system) } td { (p.row.kind) }
                        td { (p.row.asset) } td.num { (format!("{:+}", p.row.delta)) } td.num { (p.balance) }
                    }
                }
            }
        }
        h2 { "Largest inflows" }
        table { tbody { @for p in &t.largest_inflows {
            tr { td { (ts(p.ts_us)) } td { (p.tx_id) } td { (p.kind) } td { (p.asset) } td.num { (p.delta) } } } } }
        h2 { "Counterparties" @if (t.counterparties.len() as u64) < t.counterparties_total { " (top " (t.counterparties.len()) " of " (t.counterparties_total) ")" } }
        table #counterparties {
            thead { tr { th { "account" } th { "realm" } th { "asset" } th { "received from" } th { "sent to" } th { "transactions" } } }
            tbody { @for c in &t.counterparties {
                tr { td { a href=(account_url(&c.realm, &c.account)) { (c.account) } } td { (c.realm) } td { (c.asset) } td.num { (c.received) } td.num { (c.sent) } td.num { (c.transactions) } }
            } }
        }
    };
    Ok(page(layout(&format!("Account {}", q.id), body)))
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: String,
}

async fn search(State(ui): State<Arc<Ui>>, Query(s): Query<SearchQuery>) -> PageResult {
    let q = s.q.trim().to_string();
    check_len("the search", &q)?;
    if q.is_empty() {
        return Ok(Redirect::to("/ui/findings").into_response());
    }
    let j = &ui.journal;
    let txs = j.tx_positions(&q).await.map_err(internal)?;
    if !txs.is_empty() {
        let positions: Vec<i64> = txs.iter().map(|t| t.position).collect();
        let items = j.items_at(&positions).await.map_err(internal)?;
        let postings = j.postings_at(&positions).await.map_err(internal)?;
        let findings = j
            .findings_for_txs(std::slice::from_ref(&q))
            .await
            .map_err(internal)?;
        let realm = txs[0].realm.clone().unwrap_or_default();
        let body = html! {
            p { (txs[0].system.clone().unwrap_or_default()) " · " (txs[0].kind.clone().unwrap_or_default()) " · realm " (realm) }
            h2 { "Items moved" }
            ul #tx-items { @for i in &items { li { a href=(item_url(&realm, i)) { (i) } } } }
            h2 { "Postings" }
            ul { @for p in &postings { li { a href=(account_url(&realm, &p.account)) { (p.account) } " " (format!("{:+}", p.delta)) " " (p.asset) } } }
            h2 { "Findings at this transaction" }
            ul { @for f in &findings { li { a href=(finding_url(&f.fingerprint)) { (f.invariant) } " " (f.message) } } }
        };
        return Ok(page(layout(&format!("Transaction {q}"), body)));
    }
    if j.has_item(&q).await.map_err(internal)? {
        return Ok(Redirect::to(&item_url("", &q)).into_response());
    }
    if j.has_account(&q).await.map_err(internal)? {
        return Ok(Redirect::to(&account_url("", &q)).into_response());
    }
    Err(error(
        StatusCode::NOT_FOUND,
        format!("no item, account or transaction `{q}` in the journal"),
    ))
}
