//! The only modules that do I/O against services: RabbitMQ (lapin), PostgreSQL (sqlx),
//! HTTP (axum). Each is a thin translation between the service and the core's types.

pub mod amqp;
pub mod http;
pub mod journal;
pub mod postgres;
pub mod ui;
