//! The only modules that do I/O against services: RabbitMQ (lapin), PostgreSQL (sqlx),
//! HTTP (axum). Each is a thin translation between the service and the core's types.

pub mod amqp;
pub mod gate_store;
pub mod http;
pub mod http_client;
pub mod journal;
pub mod postgres;
pub mod recon_pg;
pub mod redis;
pub mod sim_stores;
pub mod ui;
