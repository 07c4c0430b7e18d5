//! RabbitMQ (lapin): topology, consuming, acking, dead-lettering, publishing findings
//! and simulated events. The only module that imports lapin. Every broker call has a
//! timeout; a connection is never reused after an error (the daemon reconnects and
//! relies on redelivery plus `tx_id` idempotency).

use std::future::Future;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use crate::core::finding::Finding;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not answer `{what}` within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("RabbitMQ refused a publish of {what} (nack)")]
    Nacked { what: &'static str },
}

/// Content types of events-v1 on AMQP.
pub const CONTENT_JSON: &str = "application/json";
pub const CONTENT_NDJSON: &str = "application/x-ndjson";
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-assayer-reason";

/// The names the daemon's queue topology is made of.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub binding_keys: Vec<String>,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub findings_exchange: String,
    /// Declare (true) or only verify passively (false).
    pub declare: bool,
}

/// Quorum queues re-deliver a message at most this often before the broker dead-letters
/// it: a poison message that crashes the daemon cannot block the queue forever.
pub const DELIVERY_LIMIT: i64 = 20;

/// A published message's pending confirm ([`Amqp::publish_finding_unconfirmed`]).
#[must_use = "a publish is only known to be safe once its confirm is awaited"]
pub struct Confirm {
    confirm: lapin::PublisherConfirm,
    timeout: Duration,
}

impl Confirm {
    /// Waits for the broker's confirm; a nack is an error.
    pub async fn wait(self) -> Result<(), BusError> {
        let c = within(self.timeout, "publisher confirm", self.confirm).await?;
        if c.is_nack() {
            return Err(BusError::Nacked { what: "a finding" });
        }
        Ok(())
    }
}

pub struct Amqp {
    conn: Connection,
    /// Consuming and acking.
    chan: Channel,
    /// Publishing (confirm mode): dead letters, findings.
    publish: Channel,
    timeout: Duration,
}

async fn within<T>(
    timeout: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BusError::Timeout { what, timeout }),
    }
}

fn s(v: &str) -> ShortString {
    v.into()
}

impl Amqp {
    pub async fn connect(url: &str, name: &str, timeout: Duration) -> Result<Amqp, BusError> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = within(timeout, "connect", Connection::connect(url, props)).await?;
        let chan = within(timeout, "channel.open", conn.create_channel()).await?;
        let publish = within(timeout, "channel.open", conn.create_channel()).await?;
        within(
            timeout,
            "confirm.select",
            publish.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Amqp {
            conn,
            chan,
            publish,
            timeout,
        })
    }

    pub async fn close(&self) {
        let _ = tokio::time::timeout(self.timeout, self.conn.close(200, s("bye"))).await;
    }

    /// Declares (or verifies) the events exchange, the daemon's quorum queue with
    /// single-active-consumer and its bindings, the dead-letter exchange and queue, and
    /// the findings exchange.
    pub async fn declare(&self, t: &Topology) -> Result<(), BusError> {
        let passive = !t.declare;
        let ex = |name: &str, kind: ExchangeKind| {
            self.chan.exchange_declare(
                s(name),
                kind,
                ExchangeDeclareOptions {
                    passive,
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
        };
        within(
            self.timeout,
            "exchange.declare",
            ex(&t.exchange, ExchangeKind::Topic),
        )
        .await?;
        within(
            self.timeout,
            "exchange.declare",
            ex(&t.dead_letter_exchange, ExchangeKind::Direct),
        )
        .await?;
        within(
            self.timeout,
            "exchange.declare",
            ex(&t.findings_exchange, ExchangeKind::Topic),
        )
        .await?;

        let mut dlq_args = FieldTable::default();
        dlq_args.insert(
            s("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        within(
            self.timeout,
            "queue.declare",
            self.chan.queue_declare(
                s(&t.dead_letter_queue),
                QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                if passive {
                    FieldTable::default()
                } else {
                    dlq_args
                },
            ),
        )
        .await?;

        let mut args = FieldTable::default();
        args.insert(
            s("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args.insert(s("x-single-active-consumer"), AMQPValue::Boolean(true));
        args.insert(
            s("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(t.dead_letter_exchange.as_str())),
        );
        args.insert(
            s("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(t.queue.as_str())),
        );
        args.insert(
            s("x-delivery-limit"),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        within(
            self.timeout,
            "queue.declare",
            self.chan.queue_declare(
                s(&t.queue),
                QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                if passive { FieldTable::default() } else { args },
            ),
        )
        .await?;
        if t.declare {
            for key in &t.binding_keys {
                within(
                    self.timeout,
                    "queue.bind",
                    self.chan.queue_bind(
                        s(&t.queue),
                        s(&t.exchange),
                        s(key),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            }
            within(
                self.timeout,
                "queue.bind",
                self.chan.queue_bind(
                    s(&t.dead_letter_queue),
                    s(&t.dead_letter_exchange),
                    s(&t.queue),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// Starts consuming with manual acks and at most `prefetch` unacked messages.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, BusError> {
        within(
            self.timeout,
            "basic.qos",
            self.chan.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        within(
            self.timeout,
            "basic.consume",
            self.chan.basic_consume(
                s(queue),
                s(tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Acks every delivery up to and including `tag` (on this connection's channel).
    pub async fn ack_through(&self, tag: u64) -> Result<(), BusError> {
        within(
            self.timeout,
            "basic.ack",
            self.chan.basic_ack(tag, BasicAckOptions { multiple: true }),
        )
        .await
    }

    /// Publishes `body` to the dead-letter exchange with the reason in a header, and
    /// waits for the broker's confirm. The caller acks the original afterwards.
    pub async fn dead_letter(
        &self,
        t: &Topology,
        body: &[u8],
        content_type: &str,
        reason: &str,
    ) -> Result<(), BusError> {
        let mut headers = FieldTable::default();
        headers.insert(
            s(REASON_HEADER),
            AMQPValue::LongString(LongString::from(truncate(reason, 4096))),
        );
        headers.insert(
            s("x-assayer-queue"),
            AMQPValue::LongString(LongString::from(t.queue.as_str())),
        );
        let props = BasicProperties::default()
            .with_content_type(s(content_type))
            .with_delivery_mode(2)
            .with_headers(headers);
        self.publish_confirmed(
            &t.dead_letter_exchange,
            &t.queue,
            body,
            props,
            "a dead letter",
        )
        .await
    }

    /// Publishes a finding (routing key `<severity>.<invariant>`) and waits for the
    /// broker's confirm.
    pub async fn publish_finding(&self, exchange: &str, f: &Finding) -> Result<(), BusError> {
        self.publish_finding_unconfirmed(exchange, f)
            .await?
            .wait()
            .await
    }

    /// Publishes a finding without waiting for the broker's confirm: the caller awaits
    /// the returned [`Confirm`] later, so a run of findings costs one round trip.
    pub async fn publish_finding_unconfirmed(
        &self,
        exchange: &str,
        f: &Finding,
    ) -> Result<Confirm, BusError> {
        let body = serde_json::to_vec(f).expect("a Finding always serializes");
        let key = format!("{}.{}", f.severity, f.invariant);
        let props = BasicProperties::default()
            .with_content_type(s(CONTENT_JSON))
            .with_delivery_mode(2);
        let confirm = within(
            self.timeout,
            "basic.publish",
            self.publish.basic_publish(
                s(exchange),
                s(&key),
                BasicPublishOptions::default(),
                &body,
                props,
            ),
        )
        .await?;
        Ok(Confirm {
            confirm,
            timeout: self.timeout,
        })
    }

    /// Publishes one persistent JSON message and waits for the broker's confirm (a
    /// rollback hook's message).
    pub async fn publish_json(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
    ) -> Result<(), BusError> {
        let props = BasicProperties::default()
            .with_content_type(s(CONTENT_JSON))
            .with_delivery_mode(2);
        self.publish_confirmed(exchange, key, body, props, "a rollback message")
            .await
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: BasicProperties,
        what: &'static str,
    ) -> Result<(), BusError> {
        let confirm = within(
            self.timeout,
            "basic.publish",
            self.publish.basic_publish(
                s(exchange),
                s(key),
                BasicPublishOptions::default(),
                body,
                props,
            ),
        )
        .await?;
        let c = within(self.timeout, "publisher confirm", confirm).await?;
        if c.is_nack() {
            return Err(BusError::Nacked { what });
        }
        Ok(())
    }

    /// The publishing channel, for bulk publishers (`assayer sim --publish`).
    pub fn publisher(&self) -> &Channel {
        &self.publish
    }

    pub fn channel(&self) -> &Channel {
        &self.chan
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A message's body split into events: one JSON event, or NDJSON lines.
pub fn is_ndjson(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| c.starts_with(CONTENT_NDJSON))
}

/// The reason header of a dead-lettered message, if any.
pub fn reason_header(props: &BasicProperties) -> Option<String> {
    props.headers().as_ref().and_then(|h| {
        h.inner().get(REASON_HEADER).and_then(|v| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        })
    })
}

/// How `publish_stream` sends events.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub exchange: String,
    /// Events per second, or `None` for as fast as the broker confirms.
    pub rate: Option<u64>,
    /// Events per NDJSON message; 1 = one event per `application/json` message.
    pub batch: usize,
    /// Publisher confirms outstanding at most (a bounded window, not one round trip
    /// per message).
    pub confirms_in_flight_max: usize,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PublishStats {
    pub events: u64,
    pub messages: u64,
}

/// The routing key of an event line: `<realm>.<system>` (`default` realm when absent;
/// `unknown` parts when the line cannot be read).
pub fn routing_key(line: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow, default)]
        realm: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        system: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Key<'_>>(line) {
        Ok(k) => (
            k.realm.map_or_else(|| "default".into(), |r| r.into_owned()),
            k.system
                .map_or_else(|| "unknown".into(), |s| s.into_owned()),
        ),
        Err(_) => ("default".into(), "unknown".into()),
    }
}

/// Publishes event lines from `lines` with publisher confirms: one event per message
/// (routing key `<realm>.<system>`), or NDJSON batches per realm (routing key
/// `<realm>.batch`).
pub async fn publish_stream(
    bus: &Amqp,
    opts: &PublishOptions,
    mut lines: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<PublishStats, BusError> {
    use std::collections::{BTreeMap, VecDeque};
    let mut out = ConfirmedPublisher {
        bus,
        inflight: VecDeque::new(),
        max: opts.confirms_in_flight_max,
        exchange: &opts.exchange,
    };
    let mut stats = PublishStats::default();
    let started = tokio::time::Instant::now();
    let mut batches: BTreeMap<String, (Vec<u8>, usize)> = BTreeMap::new();

    while let Some(line) = lines.recv().await {
        if let Some(rate) = opts.rate.filter(|r| *r > 0) {
            let due = started + Duration::from_secs_f64(stats.events as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        stats.events += 1;
        let (realm, system) = routing_key(&line);
        if opts.batch <= 1 {
            let key = format!("{realm}.{system}");
            out.send(&key, &line, CONTENT_JSON).await?;
            stats.messages += 1;
            continue;
        }
        let (buf, n) = batches.entry(realm.clone()).or_default();
        buf.extend_from_slice(&line);
        buf.push(b'\n');
        *n += 1;
        if *n >= opts.batch {
            let body = std::mem::take(buf);
            *n = 0;
            let key = format!("{realm}.batch");
            out.send(&key, &body, CONTENT_NDJSON).await?;
            stats.messages += 1;
        }
    }
    for (realm, (body, n)) in batches {
        if n > 0 {
            let key = format!("{realm}.batch");
            out.send(&key, &body, CONTENT_NDJSON).await?;
            stats.messages += 1;
        }
    }
    out.drain(0).await?;
    Ok(stats)
}

/// Publishes with a bounded window of outstanding publisher confirms.
struct ConfirmedPublisher<'a> {
    bus: &'a Amqp,
    inflight: std::collections::VecDeque<lapin::PublisherConfirm>,
    max: usize,
    exchange: &'a str,
}

impl ConfirmedPublisher<'_> {
    /// Waits for confirms until at most `keep` are outstanding.
    async fn drain(&mut self, keep: usize) -> Result<(), BusError> {
        while self.inflight.len() > keep {
            let c = self.inflight.pop_front().expect("non-empty");
            let c = within(self.bus.timeout, "publisher confirm", c).await?;
            if c.is_nack() {
                return Err(BusError::Nacked { what: "an event" });
            }
        }
        Ok(())
    }

    async fn send(&mut self, key: &str, body: &[u8], content_type: &str) -> Result<(), BusError> {
        self.drain(self.max.saturating_sub(1)).await?;
        let props = BasicProperties::default()
            .with_content_type(s(content_type))
            .with_delivery_mode(2);
        let confirm = within(
            self.bus.timeout,
            "basic.publish",
            self.bus.publish.basic_publish(
                s(self.exchange),
                s(key),
                BasicPublishOptions::default(),
                body,
                props,
            ),
        )
        .await?;
        self.inflight.push_back(confirm);
        Ok(())
    }
}

/// Declares only the events exchange (durable topic) — what a producer needs.
pub async fn declare_exchange(bus: &Amqp, exchange: &str) -> Result<(), BusError> {
    within(
        bus.timeout,
        "exchange.declare",
        bus.chan.exchange_declare(
            s(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}
