//! Support queries over the daemon's PostgreSQL state (issue #6): an item's journaled
//! moves, an account's postings, findings (list, show, acknowledge). Runtime-checked
//! sqlx queries; every result set is bounded ([`TRACE_ROWS_MAX`], [`FINDINGS_PAGE_MAX`]).
//!
//! Rows come back in the order the engine applied them: `ts`, then journal position
//! (the journal itself is in arrival order, which the reorder window may have changed).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use crate::core::provenance::{
    self, AccountTrace, AssetBalance, BalancePoint, CROSSINGS_MAX, Counterparty, ItemStep,
    ItemTrace, OtherPosting, PostingRow,
};

/// At most this many journal rows per trace: 100× the 10,000-move item and 10× the
/// 100,000-posting account the support bench traces, and ~100 MB of rows in memory.
pub const TRACE_ROWS_MAX: i64 = 1_000_000;
/// At most this many findings per page (a console page, a `findings list`).
pub const FINDINGS_PAGE_MAX: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{what} has more than {max} journal rows; narrow the query (--realm, --asset)")]
    TooMany { what: String, max: i64 },
    #[error("no finding with fingerprint or prefix `{0}`")]
    NoFinding(String),
    #[error("`{prefix}` matches several findings ({examples}…); give more of the fingerprint")]
    Ambiguous { prefix: String, examples: String },
    #[error("finding {0} is resolved; only open findings can be acknowledged")]
    Resolved(String),
    #[error("{0}")]
    Invalid(String),
}

/// Read access to the journal of one daemon group, and to findings.
#[derive(Clone)]
pub struct Journal {
    pool: PgPool,
    group: String,
}

/// A stored finding, with its review status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FindingRow {
    pub fingerprint: String,
    pub invariant: String,
    pub severity: String,
    pub realm: String,
    pub system: Option<String>,
    pub tx_id: Option<String>,
    pub seq: Option<i64>,
    pub subject: Option<String>,
    pub message: String,
    pub evidence: serde_json::Value,
    /// RFC 3339.
    pub detected_at: String,
    pub first_seen: String,
    pub last_seen: String,
    pub occurrences: i64,
    pub status: String,
    pub status_by: Option<String>,
    pub status_reason: Option<String>,
    pub status_at: Option<String>,
}

/// A journal entry found by transaction id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TxEntry {
    pub position: i64,
    pub realm: Option<String>,
    pub system: Option<String>,
    pub kind: Option<String>,
}

/// Filters for listing findings; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    pub severity: Option<String>,
    pub invariant: Option<String>,
    pub system: Option<String>,
    pub realm: Option<String>,
    pub status: Option<String>,
    /// Detected at or after this instant (microseconds since the epoch).
    pub since_us: Option<i64>,
    pub subject: Option<String>,
    pub tx_id: Option<String>,
}

pub const SEVERITIES: [&str; 4] = ["critical", "major", "minor", "info"];
pub const STATUSES: [&str; 3] = ["open", "acknowledged", "resolved"];

impl FindingFilter {
    /// Rejects values the findings table cannot hold (a typo must not list nothing).
    pub fn validate(&self) -> Result<(), JournalError> {
        if let Some(s) = &self.severity
            && !SEVERITIES.contains(&s.as_str())
        {
            return Err(JournalError::Invalid(format!(
                "unknown severity `{s}`; one of {}",
                SEVERITIES.join(", ")
            )));
        }
        if let Some(s) = &self.status
            && !STATUSES.contains(&s.as_str())
        {
            return Err(JournalError::Invalid(format!(
                "unknown status `{s}`; one of {}",
                STATUSES.join(", ")
            )));
        }
        if let Some(i) = &self.invariant
            && i.parse::<crate::core::finding::Invariant>().is_err()
        {
            return Err(JournalError::Invalid(format!("unknown invariant `{i}`")));
        }
        Ok(())
    }
}

const FINDING_COLUMNS: &str =
    "fingerprint, invariant, severity, realm, system, tx_id, seq, subject, message, evidence,
    to_char(detected_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    to_char(first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    occurrences, status, status_by, status_reason,
    to_char(status_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// The WHERE clause shared by list and count: `$1..$8` are the filter's fields.
const FINDING_WHERE: &str = "($1::text IS NULL OR severity = $1)
    AND ($2::text IS NULL OR invariant = $2)
    AND ($3::text IS NULL OR system = $3)
    AND ($4::text IS NULL OR realm = $4)
    AND ($5::text IS NULL OR status = $5)
    AND ($6::bigint IS NULL OR detected_at >= timestamptz 'epoch' + $6 * interval '1 microsecond')
    AND ($7::text IS NULL OR subject = $7)
    AND ($8::text IS NULL OR tx_id = $8)";

fn finding_row(r: &PgRow) -> FindingRow {
    FindingRow {
        fingerprint: r.get(0),
        invariant: r.get(1),
        severity: r.get(2),
        realm: r.get(3),
        system: r.get(4),
        tx_id: r.get(5),
        seq: r.get(6),
        subject: r.get(7),
        message: r.get(8),
        evidence: r.get(9),
        detected_at: r.get(10),
        first_seen: r.get(11),
        last_seen: r.get(12),
        occurrences: r.get(13),
        status: r.get(14),
        status_by: r.get(15),
        status_reason: r.get(16),
        status_at: r.get(17),
    }
}

impl Journal {
    pub async fn connect(
        url: &str,
        group: &str,
        pool_size_max: u32,
        connect_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<Journal, JournalError> {
        let opts = PgConnectOptions::from_str(url)?
            .application_name("assayer-support")
            .options([(
                "statement_timeout",
                format!("{}ms", statement_timeout.as_millis()),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size_max)
            .acquire_timeout(connect_timeout)
            .connect_with(opts)
            .await?;
        Ok(Journal {
            pool,
            group: group.to_string(),
        })
    }

    /// A reader whose pool connects on first use (the daemon's console: startup must
    /// not wait for PostgreSQL).
    pub fn connect_lazy(
        url: &str,
        group: &str,
        pool_size_max: u32,
        connect_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<Journal, JournalError> {
        let opts = PgConnectOptions::from_str(url)?
            .application_name("assayer-console")
            .options([(
                "statement_timeout",
                format!("{}ms", statement_timeout.as_millis()),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size_max)
            .acquire_timeout(connect_timeout)
            .connect_lazy_with(opts);
        Ok(Journal {
            pool,
            group: group.to_string(),
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Every journaled move of `item` (in `realm`, or every realm), in applied order:
    /// one range of the `journal_items_trace` index.
    pub async fn item_steps(
        &self,
        realm: Option<&str>,
        item: &str,
    ) -> Result<Vec<ItemStep>, JournalError> {
        let rows = sqlx::query(
            "SELECT position, tx_id, realm, system, kind, ts_us, actor, from_loc, to_loc
               FROM journal_items
              WHERE group_name = $1 AND item = $2 AND ($3::text IS NULL OR realm = $3)
              ORDER BY ts_us, position, ord
              LIMIT $4",
        )
        .bind(&self.group)
        .bind(item)
        .bind(realm)
        .bind(TRACE_ROWS_MAX + 1)
        .fetch_all(&self.pool)
        .await?;
        if rows.len() as i64 > TRACE_ROWS_MAX {
            return Err(JournalError::TooMany {
                what: format!("item {item}"),
                max: TRACE_ROWS_MAX,
            });
        }
        rows.iter()
            .map(|r| {
                Ok(ItemStep {
                    position: r.try_get(0)?,
                    tx_id: r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                    realm: r.try_get(2)?,
                    system: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                    kind: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                    ts_us: r.try_get::<Option<i64>, _>(5)?.unwrap_or_default(),
                    actor: r.try_get(6)?,
                    from: r.try_get(7)?,
                    to: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Postings of the transactions at `positions`: (tx_id, account, asset, delta).
    pub async fn postings_at(&self, positions: &[i64]) -> Result<Vec<OtherPosting>, JournalError> {
        let rows = sqlx::query(
            "SELECT tx_id, account, asset, delta FROM journal_postings
              WHERE group_name = $1 AND position = ANY($2)
              ORDER BY position, ord",
        )
        .bind(&self.group)
        .bind(positions)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OtherPosting {
                    tx_id: r.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
                    account: r.try_get(1)?,
                    asset: r.try_get(2)?,
                    delta: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// An account's trace (see [`AccountQuery`]), without reading all its postings:
    /// totals and counterparties from the rollups the daemon keeps as it journals,
    /// the newest postings and the largest inflows from one short index range per
    /// realm and asset (running balances counted back from the rollup's total), and
    /// the below-zero crossings from the engine's `balance.overdraft` findings.
    pub async fn account(&self, q: &AccountQuery<'_>) -> Result<AccountTrace, JournalError> {
        // $1 group, $2 account, $3 realm, $4 asset: the rollup rows the trace covers.
        const ROLLUPS: &str = "r.group_name = $1 AND r.account = $2
            AND ($3::text IS NULL OR r.realm = $3) AND ($4::text IS NULL OR r.asset = $4)";
        const POSTING: &str =
            "p.realm, p.asset, p.ts_us, p.position, p.delta, p.tx_id, p.system, p.kind";
        let mut t = AccountTrace {
            account: q.account.to_string(),
            postings: 0,
            balances: Vec::new(),
            history: Vec::new(),
            below_zero: Vec::new(),
            largest_inflows: Vec::new(),
            counterparties: Vec::new(),
            counterparties_total: 0,
        };
        let bind = |sql: String| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(self.group.clone())
                .bind(q.account.to_string())
                .bind(q.realm.map(str::to_string))
                .bind(q.asset.map(str::to_string))
        };

        let rows = bind(format!(
            "SELECT r.realm, r.asset, r.postings, r.balance::text FROM account_rollups r
              WHERE {ROLLUPS} ORDER BY r.realm, r.asset"
        ))
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let postings = r.try_get::<i64, _>(2)? as u64;
            t.postings += postings;
            t.balances.push(AssetBalance {
                realm: r.try_get(0)?,
                asset: r.try_get(1)?,
                postings,
                balance: parse_i128(r.try_get(3)?)?,
            });
        }
        if t.postings == 0 {
            return Ok(t);
        }

        // The newest postings of each realm and asset, newest first (the order the
        // counting back below needs).
        let rows = bind(format!(
            "SELECT {POSTING} FROM account_rollups r
             CROSS JOIN LATERAL (
                 SELECT * FROM journal_postings p
                  WHERE p.group_name = r.group_name AND p.account = r.account
                    AND p.realm = r.realm AND p.asset = r.asset
                  ORDER BY p.ts_us DESC, p.position DESC, p.ord DESC LIMIT $5) p
             WHERE {ROLLUPS}
             ORDER BY r.realm, r.asset, p.ts_us DESC, p.position DESC, p.ord DESC"
        ))
        .bind(q.history.clamp(0, TRACE_ROWS_MAX))
        .fetch_all(&self.pool)
        .await?;
        // Each posting's balance after it: the total, less what came after it.
        let mut after: BTreeMap<(String, String), i128> = t
            .balances
            .iter()
            .map(|b| ((b.realm.clone(), b.asset.clone()), b.balance))
            .collect();
        for r in &rows {
            let row = posting_row(r)?;
            let balance = after
                .get_mut(&(row.realm.clone(), row.asset.clone()))
                .map_or(0, |b| {
                    let here = *b;
                    *b -= i128::from(row.delta);
                    here
                });
            t.history.push(BalancePoint { row, balance });
        }
        t.history
            .sort_by_key(|p| std::cmp::Reverse((p.row.ts_us, p.row.position)));
        t.history
            .truncate(q.history.clamp(0, TRACE_ROWS_MAX) as usize);
        t.history.reverse();

        let rows = bind(format!(
            "SELECT {POSTING} FROM account_rollups r
             CROSS JOIN LATERAL (
                 SELECT * FROM journal_postings p
                  WHERE p.group_name = r.group_name AND p.account = r.account
                    AND p.realm = r.realm AND p.asset = r.asset AND p.delta > 0
                  ORDER BY p.delta DESC LIMIT $5) p
             WHERE {ROLLUPS}"
        ))
        .bind(q.top.clamp(0, FINDINGS_PAGE_MAX))
        .fetch_all(&self.pool)
        .await?;
        t.largest_inflows = rows.iter().map(posting_row).collect::<Result<_, _>>()?;
        t.largest_inflows
            .sort_by(|a, b| (b.delta, a.ts_us, a.position).cmp(&(a.delta, b.ts_us, b.position)));
        t.largest_inflows
            .truncate(q.top.clamp(0, FINDINGS_PAGE_MAX) as usize);

        // Crossings: the engine's overdraft findings the journal still holds.
        let rows = bind(format!(
            "SELECT p.realm, p.asset, p.ts_us, p.position, p.delta, p.tx_id, p.system, p.kind,
                    f.evidence->>'balance_after'
               FROM findings f
               JOIN journal j ON j.group_name = $1 AND j.tx_id = f.tx_id
               JOIN journal_postings p ON p.group_name = j.group_name AND p.position = j.position
                                      AND p.account = f.subject AND p.asset = f.evidence->>'asset'
                                      AND p.delta::text = f.evidence->>'delta'
              WHERE f.invariant = 'balance.overdraft' AND f.subject = $2
                AND ($3::text IS NULL OR f.realm = $3) AND ($4::text IS NULL OR f.evidence->>'asset' = $4)
              ORDER BY p.ts_us, p.position, p.ord LIMIT {CROSSINGS_MAX}"
        ))
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            t.below_zero.push(BalancePoint {
                row: posting_row(r)?,
                balance: parse_i128(r.try_get(8)?)?,
            });
        }

        let rows = bind(format!(
            "SELECT r.realm, r.asset, c.counterparty, least(c.received, 9223372036854775807)::bigint,
                    least(c.sent, 9223372036854775807)::bigint, c.transactions,
                    count(*) OVER ()
               FROM account_rollups r
               JOIN account_counterparties c
                 ON c.group_name = r.group_name AND c.account = r.account
                AND c.realm = r.realm AND c.asset = r.asset
              WHERE {ROLLUPS}
              ORDER BY c.received + c.sent DESC, c.counterparty, r.realm, r.asset
              LIMIT $5"
        ))
        .bind(q.counterparties.clamp(0, FINDINGS_PAGE_MAX))
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            t.counterparties_total = r.try_get::<i64, _>(6)? as u64;
            t.counterparties.push(Counterparty {
                realm: r.try_get(0)?,
                asset: r.try_get(1)?,
                account: r.try_get(2)?,
                received: r.try_get(3)?,
                sent: r.try_get(4)?,
                transactions: r.try_get::<i64, _>(5)? as u64,
            });
        }
        Ok(t)
    }

    /// Whether the journal has any move of `item` (any realm).
    pub async fn has_item(&self, item: &str) -> Result<bool, JournalError> {
        let row =
            sqlx::query("SELECT 1 FROM journal_items WHERE group_name = $1 AND item = $2 LIMIT 1")
                .bind(&self.group)
                .bind(item)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// Whether the journal has any posting to `account` (any realm).
    pub async fn has_account(&self, account: &str) -> Result<bool, JournalError> {
        let row = sqlx::query(
            "SELECT 1 FROM journal_postings WHERE group_name = $1 AND account = $2 LIMIT 1",
        )
        .bind(&self.group)
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Journal entries of a transaction id (a search box answer).
    pub async fn tx_positions(&self, tx_id: &str) -> Result<Vec<TxEntry>, JournalError> {
        let rows = sqlx::query(
            "SELECT position, realm, system, kind FROM journal
              WHERE tx_id = $2 AND group_name = $1 ORDER BY position LIMIT 100",
        )
        .bind(&self.group)
        .bind(tx_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| TxEntry {
                position: r.get(0),
                realm: r.get(1),
                system: r.get(2),
                kind: r.get(3),
            })
            .collect())
    }

    /// Item ids the transactions at `positions` moved.
    pub async fn items_at(&self, positions: &[i64]) -> Result<Vec<String>, JournalError> {
        let rows = sqlx::query(
            "SELECT DISTINCT item FROM journal_items
              WHERE group_name = $1 AND position = ANY($2) ORDER BY item LIMIT 1000",
        )
        .bind(&self.group)
        .bind(positions)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    // ----- findings ---------------------------------------------------------------

    /// Findings matching `f`, newest first, `limit` (≤ [`FINDINGS_PAGE_MAX`]) from
    /// `offset`.
    pub async fn findings(
        &self,
        f: &FindingFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<FindingRow>, JournalError> {
        f.validate()?;
        let q = format!(
            "SELECT {FINDING_COLUMNS} FROM findings WHERE {FINDING_WHERE}
              ORDER BY detected_at DESC, fingerprint LIMIT $9 OFFSET $10"
        );
        let rows = bind_filter(sqlx::query(sqlx::AssertSqlSafe(q)), f)
            .bind(limit.clamp(0, FINDINGS_PAGE_MAX))
            .bind(offset.max(0))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(finding_row).collect())
    }

    pub async fn count_findings(&self, f: &FindingFilter) -> Result<i64, JournalError> {
        f.validate()?;
        let q = format!("SELECT count(*) FROM findings WHERE {FINDING_WHERE}");
        let row = bind_filter(sqlx::query(sqlx::AssertSqlSafe(q)), f)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    /// The finding whose fingerprint is `id` or starts with it (unique prefix).
    pub async fn finding(&self, id: &str) -> Result<FindingRow, JournalError> {
        let id = id.trim();
        if id.is_empty() {
            return Err(JournalError::NoFinding(id.to_string()));
        }
        let q = format!(
            "SELECT {FINDING_COLUMNS} FROM findings
              WHERE fingerprint = $1 OR left(fingerprint, length($1)) = $1
              ORDER BY (fingerprint = $1) DESC, fingerprint LIMIT 3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let rows: Vec<FindingRow> = rows.iter().map(finding_row).collect();
        match rows.as_slice() {
            [] => Err(JournalError::NoFinding(id.to_string())),
            [one, ..] if one.fingerprint == id => Ok(one.clone()),
            [one] => Ok(one.clone()),
            many => Err(JournalError::Ambiguous {
                prefix: id.to_string(),
                examples: many
                    .iter()
                    .map(|r| r.fingerprint.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Acknowledges a finding: status `acknowledged`, who, why and when. Resolved
    /// findings stay resolved.
    pub async fn ack(&self, id: &str, by: &str, reason: &str) -> Result<FindingRow, JournalError> {
        if by.trim().is_empty() || reason.trim().is_empty() {
            return Err(JournalError::Invalid(
                "acknowledging needs a name (--by) and a reason (--reason)".into(),
            ));
        }
        let found = self.finding(id).await?;
        if found.status == "resolved" {
            return Err(JournalError::Resolved(found.fingerprint));
        }
        sqlx::query(
            "UPDATE findings SET status = 'acknowledged', status_by = $2, status_reason = $3,
                    status_at = now()
              WHERE fingerprint = $1 AND status <> 'resolved'",
        )
        .bind(&found.fingerprint)
        .bind(by)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        self.finding(&found.fingerprint).await
    }

    /// Findings raised at any of `tx_ids` (the invariants that flagged a fork).
    pub async fn findings_for_txs(
        &self,
        tx_ids: &[String],
    ) -> Result<Vec<FindingRow>, JournalError> {
        let q = format!(
            "SELECT {FINDING_COLUMNS} FROM findings WHERE tx_id = ANY($1)
              ORDER BY detected_at LIMIT {FINDINGS_PAGE_MAX}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(tx_ids)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(finding_row).collect())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_filter<'q>(q: PgQuery<'q>, f: &FindingFilter) -> PgQuery<'q> {
    q.bind(f.severity.clone())
        .bind(f.invariant.clone())
        .bind(f.system.clone())
        .bind(f.realm.clone())
        .bind(f.status.clone())
        .bind(f.since_us)
        .bind(f.subject.clone())
        .bind(f.tx_id.clone())
}

// ----- composed reports (the CLI and the console) ----------------------------------

/// An item trace and the findings raised at its fork transactions.
#[derive(Debug, Serialize)]
pub struct ItemReport {
    #[serde(flatten)]
    pub trace: ItemTrace,
    pub fork_findings: Vec<FindingRow>,
}

/// Reads and builds the item trace (shared by the CLI and the web console).
pub async fn item_report(
    j: &Journal,
    realm: Option<&str>,
    item: &str,
) -> Result<ItemReport, JournalError> {
    let steps = j.item_steps(realm, item).await?;
    let mut trace = provenance::trace_item(item, steps);
    // What the copies were traded for: the postings of the taint's transactions.
    let positions = trace.taint_positions();
    if !positions.is_empty() {
        trace.attach_postings(&j.postings_at(&positions).await?);
    }
    let fork_txs: Vec<String> = trace.forks.iter().map(|f| f.tx_id.clone()).collect();
    let fork_findings = if fork_txs.is_empty() {
        Vec::new()
    } else {
        j.findings_for_txs(&fork_txs)
            .await?
            .into_iter()
            .filter(|f| f.subject.as_deref().is_none_or(|s| s == item))
            .collect()
    };
    Ok(ItemReport {
        trace,
        fork_findings,
    })
}

/// What to trace of an account, and how much of it to show.
#[derive(Debug, Clone, Copy)]
pub struct AccountQuery<'a> {
    pub account: &'a str,
    /// Only this realm [default: every realm].
    pub realm: Option<&'a str>,
    /// Only this asset [default: every asset].
    pub asset: Option<&'a str>,
    /// How many of the newest postings to list (≤ [`TRACE_ROWS_MAX`]).
    pub history: i64,
    /// How many of the largest inflows to list.
    pub top: i64,
    /// How many counterparties to list, largest volume first.
    pub counterparties: i64,
}

/// The defaults of `trace account` and the console: the newest postings listed, the
/// largest inflows, the counterparties.
pub const HISTORY_ROWS_DEFAULT: i64 = 50;
pub const TOP_INFLOWS_DEFAULT: i64 = 10;
pub const COUNTERPARTIES_DEFAULT: i64 = 20;

impl<'a> AccountQuery<'a> {
    /// Every realm and asset, with the defaults above.
    pub fn new(account: &'a str) -> AccountQuery<'a> {
        AccountQuery {
            account,
            realm: None,
            asset: None,
            history: HISTORY_ROWS_DEFAULT,
            top: TOP_INFLOWS_DEFAULT,
            counterparties: COUNTERPARTIES_DEFAULT,
        }
    }
}

fn parse_i128(s: Option<String>) -> Result<i128, JournalError> {
    let s = s.unwrap_or_default();
    s.parse()
        .map_err(|_| JournalError::Invalid(format!("balance `{s}` is not an integer")))
}

/// A posting from the columns `realm, asset, ts_us, position, delta, tx_id, system, kind`.
fn posting_row(r: &PgRow) -> Result<PostingRow, JournalError> {
    Ok(PostingRow {
        realm: r.try_get(0)?,
        asset: r.try_get(1)?,
        ts_us: r.try_get::<Option<i64>, _>(2)?.unwrap_or_default(),
        position: r.try_get(3)?,
        delta: r.try_get(4)?,
        tx_id: r.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
        system: r.try_get::<Option<String>, _>(6)?.unwrap_or_default(),
        kind: r.try_get::<Option<String>, _>(7)?.unwrap_or_default(),
    })
}
