//! PostgreSQL (sqlx): the journal, engine checkpoints and findings. The only module that
//! imports sqlx. Queries are runtime-checked (no live database at build time); batches
//! are written with `UNNEST` arrays, one round-trip per table per batch.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use crate::core::finding::Finding;
use crate::core::provenance;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("PostgreSQL migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "another daemon of group `{group}` advanced the journal to {found} (expected {expected}); resynchronising"
    )]
    HeadMoved {
        group: String,
        expected: i64,
        found: i64,
    },
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("PostgreSQL holds data assayer cannot read: {0}")]
    Corrupt(String),
    #[error("the commit task stopped")]
    CommitterStopped,
}

/// What the journal records, per accepted (or malformed) input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Event,
    Malformed,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::Event => "event",
            EntryKind::Malformed => "malformed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub position: i64,
    pub kind: EntryKind,
    pub tx_id: Option<String>,
    pub realm: Option<String>,
    pub system: Option<String>,
    pub seq: Option<i64>,
    /// Microseconds since the epoch.
    pub ts_us: Option<i64>,
    pub event_kind: Option<String>,
    pub actor: Option<String>,
    pub body: Vec<u8>,
    /// (item, from, to)
    pub items: Vec<(String, String, String)>,
    /// (account, asset, delta)
    pub postings: Vec<(String, String, i64)>,
    /// Taken in while the engine held its watermark (`Engine::hold`).
    pub held: bool,
}

/// A journal row as replay reads it.
pub struct JournalRow {
    pub position: i64,
    pub kind: EntryKind,
    pub body: Vec<u8>,
    pub held: bool,
}

/// `journal_items` rows of a batch, as column arrays for one `UNNEST` insert.
#[derive(Default)]
struct ItemRows<'a> {
    position: Vec<i64>,
    realm: Vec<&'a str>,
    item: Vec<&'a str>,
    from: Vec<&'a str>,
    to: Vec<&'a str>,
    ord: Vec<i32>,
    tx_id: Vec<Option<&'a str>>,
    ts_us: Vec<Option<i64>>,
    system: Vec<Option<&'a str>>,
    kind: Vec<Option<&'a str>>,
    actor: Vec<Option<&'a str>>,
}

impl<'a> ItemRows<'a> {
    fn push(&mut self, e: &'a JournalEntry) {
        let realm = e.realm.as_deref().unwrap_or("default");
        for (o, (item, from, to)) in e.items.iter().enumerate() {
            self.position.push(e.position);
            self.realm.push(realm);
            self.item.push(item);
            self.from.push(from);
            self.to.push(to);
            self.ord.push(o as i32);
            self.tx_id.push(e.tx_id.as_deref());
            self.ts_us.push(e.ts_us);
            self.system.push(e.system.as_deref());
            self.kind.push(e.event_kind.as_deref());
            self.actor.push(e.actor.as_deref());
        }
    }
}

/// (account, realm, asset, counterparty)
type CounterpartyKey<'a> = (&'a str, &'a str, &'a str, &'a str);
/// (received, sent, transactions)
type CounterpartySums = (i128, i128, i64);

/// `journal_postings` rows of a batch, and the account rollups they add up to.
#[derive(Default)]
struct PostingRows<'a> {
    position: Vec<i64>,
    realm: Vec<&'a str>,
    account: Vec<&'a str>,
    asset: Vec<&'a str>,
    delta: Vec<i64>,
    ord: Vec<i32>,
    tx_id: Vec<Option<&'a str>>,
    ts_us: Vec<Option<i64>>,
    system: Vec<Option<&'a str>>,
    kind: Vec<Option<&'a str>>,
    /// (account, realm, asset) → (postings, balance change)
    rollups: BTreeMap<(&'a str, &'a str, &'a str), (i64, i128)>,
    counterparties: BTreeMap<CounterpartyKey<'a>, CounterpartySums>,
}

impl<'a> PostingRows<'a> {
    fn push(&mut self, e: &'a JournalEntry) {
        let realm = e.realm.as_deref().unwrap_or("default");
        for (o, (account, asset, delta)) in e.postings.iter().enumerate() {
            self.position.push(e.position);
            self.realm.push(realm);
            self.account.push(account);
            self.asset.push(asset);
            self.delta.push(*delta);
            self.ord.push(o as i32);
            self.tx_id.push(e.tx_id.as_deref());
            self.ts_us.push(e.ts_us);
            self.system.push(e.system.as_deref());
            self.kind.push(e.event_kind.as_deref());
            let r = self.rollups.entry((account, realm, asset)).or_default();
            r.0 += 1;
            r.1 += i128::from(*delta);
        }
        for c in provenance::counterparties(&e.postings) {
            let r = self
                .counterparties
                .entry((c.account, realm, c.asset, c.counterparty))
                .or_default();
            if c.amount > 0 {
                r.0 += i128::from(c.amount);
            } else {
                r.1 -= i128::from(c.amount);
            }
            r.2 += 1;
        }
    }

    /// Adds the batch's rollups to `account_rollups` and `account_counterparties`
    /// (keys in order: concurrent writers cannot deadlock).
    async fn upsert_rollups(
        &self,
        group: &str,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), StoreError> {
        let n = self.rollups.len();
        let (mut account, mut realm, mut asset) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut postings, mut balance) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for ((a, r, s), (p, b)) in &self.rollups {
            account.push(*a);
            realm.push(*r);
            asset.push(*s);
            postings.push(*p);
            balance.push(b.to_string());
        }
        sqlx::query(
            "INSERT INTO account_rollups AS t (group_name, account, realm, asset, postings, balance)
             SELECT $1, u.account, u.realm, u.asset, u.postings, u.balance::numeric
               FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
                    AS u(account, realm, asset, postings, balance)
             ON CONFLICT (group_name, account, realm, asset) DO UPDATE
                SET postings = t.postings + EXCLUDED.postings,
                    balance = t.balance + EXCLUDED.balance",
        )
        .bind(group)
        .bind(&account)
        .bind(&realm)
        .bind(&asset)
        .bind(&postings)
        .bind(&balance)
        .execute(&mut **tx)
        .await?;
        if self.counterparties.is_empty() {
            return Ok(());
        }
        let n = self.counterparties.len();
        let (mut account, mut realm, mut asset, mut party) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut received, mut sent, mut txs) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((a, r, s, c), (rec, snt, t)) in &self.counterparties {
            account.push(*a);
            realm.push(*r);
            asset.push(*s);
            party.push(*c);
            received.push(rec.to_string());
            sent.push(snt.to_string());
            txs.push(*t);
        }
        sqlx::query(
            "INSERT INTO account_counterparties AS t
                    (group_name, account, realm, asset, counterparty, received, sent, transactions)
             SELECT $1, u.account, u.realm, u.asset, u.party, u.received::numeric,
                    u.sent::numeric, u.txs
               FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                           $8::bigint[])
                    AS u(account, realm, asset, party, received, sent, txs)
             ON CONFLICT (group_name, account, realm, asset, counterparty) DO UPDATE
                SET received = t.received + EXCLUDED.received,
                    sent = t.sent + EXCLUDED.sent,
                    transactions = t.transactions + EXCLUDED.transactions",
        )
        .bind(group)
        .bind(&account)
        .bind(&realm)
        .bind(&asset)
        .bind(&party)
        .bind(&received)
        .bind(&sent)
        .bind(&txs)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// One durable step: everything the daemon did since the last commit.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<JournalEntry>,
    pub findings: Vec<Finding>,
    /// The journal head before this batch (optimistic concurrency between daemons of
    /// the same group).
    pub expected_head: i64,
    pub new_head: i64,
    pub snapshot: Option<Snapshot>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub position: i64,
    pub format: i32,
    pub bytes: Vec<u8>,
    pub events_accepted: i64,
}

#[derive(Clone)]
pub struct Pg {
    pool: PgPool,
    group: String,
}

pub struct ConnectOptions<'a> {
    pub url: &'a str,
    pub pool_size_max: u32,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
}

/// The pool and connection settings every assayer pool shares.
fn pool_options(o: &ConnectOptions<'_>) -> Result<(PgPoolOptions, PgConnectOptions), StoreError> {
    let opts = PgConnectOptions::from_str(o.url)?
        .application_name("assayer")
        .options([(
            "statement_timeout",
            format!("{}ms", o.statement_timeout.as_millis()),
        )]);
    let pool = PgPoolOptions::new()
        .max_connections(o.pool_size_max)
        .acquire_timeout(o.connect_timeout);
    Ok((pool, opts))
}

impl Pg {
    pub async fn connect(o: &ConnectOptions<'_>, group: &str) -> Result<Pg, StoreError> {
        let (pool, opts) = pool_options(o)?;
        Ok(Pg {
            pool: pool.connect_with(opts).await?,
            group: group.to_string(),
        })
    }

    /// A pool that connects on first use (for the status writer and the gate, which must
    /// keep running — and report — while the database is away).
    pub fn lazy(o: &ConnectOptions<'_>, group: &str) -> Result<Pg, StoreError> {
        let (pool, opts) = pool_options(o)?;
        Ok(Pg {
            pool: pool.connect_lazy_with(opts),
            group: group.to_string(),
        })
    }

    /// The pool, for the other PostgreSQL adapters (gate, support) that share it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Applies `migrations/` (embedded at build time).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    pub async fn load_checkpoint(&self) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(
            "SELECT journal_position, snapshot_format, snapshot, events_accepted
               FROM checkpoints WHERE group_name = $1",
        )
        .bind(&self.group)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Snapshot {
            position: r.get(0),
            format: r.get(1),
            bytes: r.get(2),
            events_accepted: r.get(3),
        }))
    }

    pub async fn head(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT position FROM journal_heads WHERE group_name = $1")
            .bind(&self.group)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// Journal bodies after `position`, in order, at most `limit`: (position, kind,
    /// body).
    pub async fn journal_after(
        &self,
        position: i64,
        limit: i64,
    ) -> Result<Vec<JournalRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, entry_kind, body, held FROM journal
              WHERE group_name = $1 AND position > $2 ORDER BY position LIMIT $3",
        )
        .bind(&self.group)
        .bind(position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let kind: String = r.get(1);
                let kind = if kind == "event" {
                    EntryKind::Event
                } else {
                    EntryKind::Malformed
                };
                JournalRow {
                    position: r.get(0),
                    kind,
                    body: r.get(2),
                    held: r.get(3),
                }
            })
            .collect())
    }

    /// Writes a batch in one transaction: journal rows, their item and posting index
    /// rows and rollups, findings (stored once per fingerprint; they were published on
    /// detection), a snapshot when one is due, and the new head. Nothing is acked before
    /// this returns Ok.
    pub async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.commit_after(batch, std::future::ready(())).await
    }

    /// [`Pg::commit`], taking the first row lock another batch could also take only
    /// once `predecessor_durable` is ready. The daemon's commit stage writes two
    /// batches at once this way: the second one's journal, item and posting inserts
    /// (which lock nothing the first one writes) run while the first one upserts its
    /// rollups and commits; then it upserts its own rollups and findings and moves the
    /// journal head, fenced as always, so batches become durable strictly in order and
    /// the fence still catches another daemon's writes. (Waiting any later could
    /// deadlock: the first batch waiting on a rollup row the second one locked, the
    /// second waiting here for the first.)
    pub async fn commit_after(
        &self,
        batch: &Batch,
        predecessor_durable: impl std::future::Future<Output = ()>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let postings = if batch.entries.is_empty() {
            PostingRows::default()
        } else {
            match self.insert_journal(&mut tx, &batch.entries).await {
                Ok(p) => p,
                // Another daemon of the group wrote these positions first: say so.
                Err(StoreError::Db(sqlx::Error::Database(d)))
                    if d.constraint() == Some("journal_pkey") =>
                {
                    drop(tx);
                    return Err(StoreError::HeadMoved {
                        group: self.group.clone(),
                        expected: batch.expected_head,
                        found: self.head().await?,
                    });
                }
                Err(e) => return Err(e),
            }
        };
        predecessor_durable.await;
        if !postings.position.is_empty() {
            postings.upsert_rollups(&self.group, &mut tx).await?;
        }
        if !batch.findings.is_empty() {
            upsert_findings(&mut tx, &batch.findings).await?;
        }
        if let Some(s) = &batch.snapshot {
            sqlx::query(
                "INSERT INTO checkpoints (group_name, journal_position, snapshot_format, snapshot, events_accepted)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (group_name) DO UPDATE SET journal_position = $2, snapshot_format = $3,
                   snapshot = $4, events_accepted = $5, taken_at = now()",
            )
            .bind(&self.group)
            .bind(s.position)
            .bind(s.format)
            .bind(&s.bytes)
            .bind(s.events_accepted)
            .execute(&mut *tx)
            .await?;
        }
        let moved = sqlx::query(
            "INSERT INTO journal_heads (group_name, position) VALUES ($1, $3)
             ON CONFLICT (group_name) DO UPDATE SET position = $3, updated_at = now()
               WHERE journal_heads.position = $2
             RETURNING position",
        )
        .bind(&self.group)
        .bind(batch.expected_head)
        .bind(batch.new_head)
        .fetch_optional(&mut *tx)
        .await?;
        if moved.is_none() {
            let found = sqlx::query("SELECT position FROM journal_heads WHERE group_name = $1")
                .bind(&self.group)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
            return Err(StoreError::HeadMoved {
                group: self.group.clone(),
                expected: batch.expected_head,
                found,
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Journal rows and their item/posting index rows: one multi-row `INSERT … SELECT
    /// FROM UNNEST(arrays)` per table. (Not `COPY`: sqlx sends the copy data and the
    /// closing `CopyDone` as two writes, and without TCP_NODELAY Nagle plus the server's
    /// delayed ACK stalls every small batch by ~40 ms.)
    ///
    /// Returns the batch's posting rows, whose rollups the caller upserts: the inserts
    /// here lock no row another batch writes, the rollups do.
    async fn insert_journal<'a>(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        entries: &'a [JournalEntry],
    ) -> Result<PostingRows<'a>, StoreError> {
        let n = entries.len();
        let mut position = Vec::with_capacity(n);
        let mut kind = Vec::with_capacity(n);
        let mut tx_id = Vec::with_capacity(n);
        let mut realm = Vec::with_capacity(n);
        let mut system = Vec::with_capacity(n);
        let mut seq = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut ekind = Vec::with_capacity(n);
        let mut actor = Vec::with_capacity(n);
        let mut body = Vec::with_capacity(n);
        let mut held = Vec::with_capacity(n);
        let mut items = ItemRows::default();
        let mut postings = PostingRows::default();
        for e in entries {
            position.push(e.position);
            kind.push(e.kind.as_str());
            tx_id.push(e.tx_id.as_deref());
            realm.push(e.realm.as_deref());
            system.push(e.system.as_deref());
            seq.push(e.seq);
            ts.push(e.ts_us);
            ekind.push(e.event_kind.as_deref());
            actor.push(e.actor.as_deref());
            body.push(e.body.as_slice());
            held.push(e.held);
            items.push(e);
            postings.push(e);
        }
        sqlx::query(
            "INSERT INTO journal (group_name, position, entry_kind, tx_id, realm, system, seq, ts, kind, actor, body, held)
             SELECT $1, u.position, u.kind, u.tx_id, u.realm, u.system, u.seq,
                    CASE WHEN u.ts_us IS NULL THEN NULL
                         ELSE timestamptz 'epoch' + u.ts_us * interval '1 microsecond' END,
                    u.ekind, u.actor, u.body, u.held
               FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::bytea[],
                           $12::bool[])
                    AS u(position, kind, tx_id, realm, system, seq, ts_us, ekind, actor, body, held)",
        )
        .bind(&self.group)
        .bind(&position)
        .bind(&kind)
        .bind(&tx_id)
        .bind(&realm)
        .bind(&system)
        .bind(&seq)
        .bind(&ts)
        .bind(&ekind)
        .bind(&actor)
        .bind(&body)
        .bind(&held)
        .execute(&mut **tx)
        .await?;
        if !items.position.is_empty() {
            sqlx::query(
                "INSERT INTO journal_items (group_name, position, realm, item, from_loc, to_loc, ord,
                                            tx_id, ts_us, system, kind, actor)
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                                          $7::int[], $8::text[], $9::bigint[], $10::text[], $11::text[],
                                          $12::text[])",
            )
            .bind(&self.group)
            .bind(&items.position)
            .bind(&items.realm)
            .bind(&items.item)
            .bind(&items.from)
            .bind(&items.to)
            .bind(&items.ord)
            .bind(&items.tx_id)
            .bind(&items.ts_us)
            .bind(&items.system)
            .bind(&items.kind)
            .bind(&items.actor)
            .execute(&mut **tx)
            .await?;
        }
        if !postings.position.is_empty() {
            sqlx::query(
                "INSERT INTO journal_postings (group_name, position, realm, account, asset, delta, ord,
                                               tx_id, ts_us, system, kind)
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                          $7::int[], $8::text[], $9::bigint[], $10::text[], $11::text[])",
            )
            .bind(&self.group)
            .bind(&postings.position)
            .bind(&postings.realm)
            .bind(&postings.account)
            .bind(&postings.asset)
            .bind(&postings.delta)
            .bind(&postings.ord)
            .bind(&postings.tx_id)
            .bind(&postings.ts_us)
            .bind(&postings.system)
            .bind(&postings.kind)
            .execute(&mut **tx)
            .await?;
        }
        Ok(postings)
    }

    /// Stores findings raised outside the journal pipeline (reconciliation), once per
    /// fingerprint, marked published (their sink prints or publishes them itself).
    pub async fn store_findings(&self, findings: &[Finding]) -> Result<(), StoreError> {
        if findings.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        upsert_findings(&mut tx, findings).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Findings stored but not yet published to the findings exchange (the outbox).
    pub async fn unpublished_findings(&self, limit: i64) -> Result<Vec<Finding>, StoreError> {
        let rows = sqlx::query(
            "SELECT fingerprint, invariant, severity, realm, system, tx_id, seq, subject, message,
                    evidence, (extract(epoch from detected_at) * 1000000)::bigint
               FROM findings WHERE published_at IS NULL ORDER BY first_seen LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| finding_from_row(&r)).collect()
    }

    pub async fn mark_published(&self, fingerprints: &[String]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE findings SET published_at = now() WHERE fingerprint = ANY($1) AND published_at IS NULL",
        )
        .bind(fingerprints)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes journal rows (and their item and posting index rows) older than
    /// `retention` that the checkpoint no longer needs; returns how many rows went.
    ///
    /// Costs a few index probes when nothing is due, whatever the journal's size: the
    /// oldest row says whether anything is old enough, then a binary search over
    /// positions finds the newest old-enough one. (`received_at` grows with the
    /// position: batches commit in order. Two batches written at once can start their
    /// transactions a few milliseconds out of order, which moves the boundary by as
    /// much — nothing against a retention counted in hours.) Rows go in position
    /// ranges of [`PRUNE_CHUNK`], one transaction each, index rows with their journal
    /// rows: a prune cut short leaves a shorter, consistent journal.
    pub async fn prune_journal(&self, retention: Duration) -> Result<u64, StoreError> {
        let cutoff_s = retention.as_secs() as f64;
        let covered: Option<i64> =
            sqlx::query_scalar("SELECT journal_position FROM checkpoints WHERE group_name = $1")
                .bind(&self.group)
                .fetch_optional(&self.pool)
                .await?;
        let Some(covered) = covered else {
            return Ok(0);
        };
        // Whether the first journal row at or after `position` (within the covered
        // range) is old enough to go, and where it is.
        let probe = |position: i64| {
            sqlx::query_as::<_, (i64, bool)>(
                "SELECT position, received_at < now() - make_interval(secs => $4)
                   FROM journal
                  WHERE group_name = $1 AND position >= $2 AND position <= $3
                  ORDER BY position LIMIT 1",
            )
            .bind(&self.group)
            .bind(position)
            .bind(covered)
            .bind(cutoff_s)
            .fetch_optional(&self.pool)
        };
        let Some((oldest, true)) = probe(i64::MIN).await? else {
            return Ok(0);
        };
        // Invariant: the row at `old` is old enough; every row past `young` is not.
        let (mut old, mut young) = (oldest, covered);
        while old < young {
            let mid = old + (young - old + 1) / 2;
            match probe(mid).await? {
                Some((p, true)) => old = p,
                _ => young = mid - 1,
            }
        }
        let mut deleted = 0;
        let mut from = oldest;
        while from <= old {
            let to = old.min(from.saturating_add(PRUNE_CHUNK - 1));
            let mut tx = self.pool.begin().await?;
            for table in ["journal_items", "journal_postings", "journal"] {
                let q = format!(
                    "DELETE FROM {table} WHERE group_name = $1 AND position BETWEEN $2 AND $3"
                );
                deleted += sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(&self.group)
                    .bind(from)
                    .bind(to)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            from = to + 1;
        }
        Ok(deleted)
    }
}

/// Journal positions pruned per transaction.
const PRUNE_CHUNK: i64 = 50_000;

async fn upsert_findings(
    tx: &mut Transaction<'_, Postgres>,
    findings: &[Finding],
) -> Result<(), StoreError> {
    // One row per fingerprint per statement (ON CONFLICT cannot touch a row twice).
    let mut seen = std::collections::HashMap::<&str, i64>::new();
    let mut uniq: Vec<&Finding> = Vec::new();
    for f in findings {
        let n = seen.entry(&f.fingerprint).or_insert(0);
        if *n == 0 {
            uniq.push(f);
        }
        *n += 1;
    }
    // In key order, like every batch's other upserts: concurrent batches never deadlock.
    uniq.sort_unstable_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    let fp: Vec<&str> = uniq.iter().map(|f| f.fingerprint.as_str()).collect();
    let inv: Vec<&str> = uniq.iter().map(|f| f.invariant.id()).collect();
    let sev: Vec<&str> = uniq.iter().map(|f| f.severity.as_str()).collect();
    let realm: Vec<&str> = uniq.iter().map(|f| f.realm.as_str()).collect();
    let system: Vec<Option<&str>> = uniq.iter().map(|f| f.system.as_deref()).collect();
    let tx_id: Vec<Option<&str>> = uniq.iter().map(|f| f.tx_id.as_deref()).collect();
    let seq: Vec<Option<i64>> = uniq.iter().map(|f| f.seq.map(|s| s as i64)).collect();
    let subject: Vec<Option<&str>> = uniq.iter().map(|f| f.subject.as_deref()).collect();
    let message: Vec<&str> = uniq.iter().map(|f| f.message.as_str()).collect();
    let evidence: Vec<serde_json::Value> = uniq.iter().map(|f| f.evidence.clone()).collect();
    let detected: Vec<i64> = uniq.iter().map(|f| f.detected_at.0 / 1_000).collect();
    let count: Vec<i64> = uniq.iter().map(|f| seen[f.fingerprint.as_str()]).collect();
    sqlx::query(
        "INSERT INTO findings (fingerprint, invariant, severity, realm, system, tx_id, seq, subject,
                               message, evidence, detected_at, occurrences, published_at)
         SELECT u.fp, u.inv, u.sev, u.realm, u.system, u.tx_id, u.seq, u.subject, u.message, u.evidence,
                timestamptz 'epoch' + u.detected_us * interval '1 microsecond', u.n, now()
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::bigint[], $8::text[], $9::text[], $10::jsonb[], $11::bigint[], $12::bigint[])
                AS u(fp, inv, sev, realm, system, tx_id, seq, subject, message, evidence, detected_us, n)
         ON CONFLICT (fingerprint) DO UPDATE
           SET last_seen = now(), occurrences = findings.occurrences + EXCLUDED.occurrences",
    )
    .bind(&fp)
    .bind(&inv)
    .bind(&sev)
    .bind(&realm)
    .bind(&system)
    .bind(&tx_id)
    .bind(&seq)
    .bind(&subject)
    .bind(&message)
    .bind(&evidence)
    .bind(&detected)
    .bind(&count)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn finding_from_row(r: &sqlx::postgres::PgRow) -> Result<Finding, StoreError> {
    let inv: String = r.get(1);
    let sev: String = r.get(2);
    let decode_err = |what: String| StoreError::Db(sqlx::Error::Decode(what.into()));
    Ok(Finding {
        fingerprint: r.get(0),
        invariant: inv
            .parse()
            .map_err(|e: crate::core::finding::UnknownInvariant| decode_err(e.to_string()))?,
        severity: sev.parse().map_err(decode_err)?,
        realm: r.get(3),
        system: r.get(4),
        tx_id: r.get(5),
        seq: r.get::<Option<i64>, _>(6).map(|s| s as u64),
        subject: r.get(7),
        message: r.get(8),
        evidence: r.get(9),
        detected_at: crate::core::time::Timestamp(r.get::<i64, _>(10).saturating_mul(1_000)),
    })
}
