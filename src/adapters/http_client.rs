//! Outbound HTTP (ureq, on the blocking pool): Prometheus queries for the gate's
//! service levels, the RabbitMQ management API for the bindings preflight, and JSON
//! webhooks for rollback hooks. Every call has a timeout; every failure is a message.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("HTTP worker failed: {e}"))?
}

/// Runs an instant PromQL query and returns its one value (a scalar, or a vector of
/// exactly one sample).
pub async fn prometheus_scalar(base: &str, query: &str, timeout: Duration) -> Result<f64, String> {
    let url = format!("{base}/api/v1/query");
    let query = query.to_string();
    let body: Value = blocking(move || {
        let mut resp = agent(timeout)
            .get(&url)
            .query("query", &query)
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body: Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("{url}: HTTP {status}, body is not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{url}: HTTP {status}: {}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error message")
            ));
        }
        Ok(body)
    })
    .await?;
    scalar_of(&body)
}

/// The one number in a Prometheus instant-query answer.
pub fn scalar_of(body: &Value) -> Result<f64, String> {
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let result = data["result"].as_array().ok_or("vector without result")?;
            match result.len() {
                1 => &result[0]["value"],
                0 => return Err("the query returned no sample (no data: fail closed)".into()),
                n => {
                    return Err(format!(
                        "the query returned {n} series; aggregate it to one"
                    ));
                }
            }
        }
        other => return Err(format!("unsupported result type {other:?}")),
    };
    let text = sample[1].as_str().ok_or("sample without a value")?;
    let v: f64 = text.parse().map_err(|e| format!("sample `{text}`: {e}"))?;
    if v.is_nan() {
        return Err("the query returned NaN (no data: fail closed)".into());
    }
    Ok(v)
}

/// The routing keys `queue` is bound with from `exchange`, from the RabbitMQ
/// management API (credentials and vhost taken from the AMQP URL).
pub async fn rabbitmq_bindings(
    management: &str,
    amqp_url: &str,
    queue: &str,
    exchange: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let (user, pass, vhost) = amqp_parts(amqp_url);
    let url = format!(
        "{management}/api/queues/{}/{}/bindings",
        urlencode(&vhost),
        urlencode(queue)
    );
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    let exchange = exchange.to_string();
    blocking(move || {
        let mut resp = agent(timeout)
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let body: Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(body
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|b| b["source"].as_str() == Some(exchange.as_str()))
                    .filter_map(|b| b["routing_key"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    })
    .await
}

/// POSTs `body` as JSON; `Ok` with the status line on 2xx.
pub async fn post_json(url: &str, body: &Value, timeout: Duration) -> Result<String, String> {
    let url = url.to_string();
    let body = serde_json::to_vec(body).expect("JSON values serialize");
    blocking(move || {
        let resp = agent(timeout)
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            Ok(format!("HTTP {status}"))
        } else {
            Err(format!("{url}: HTTP {status}"))
        }
    })
    .await
}

/// (user, password, vhost) of an AMQP URL, with RabbitMQ's defaults.
fn amqp_parts(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (auth, host) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
    let vhost = host
        .split_once('/')
        .map(|(_, v)| v.split('?').next().unwrap_or(""))
        .filter(|v| !v.is_empty())
        .map(|v| v.replace("%2f", "/").replace("%2F", "/"))
        .unwrap_or_else(|| "/".into());
    (user.to_string(), pass.to_string(), vhost)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_reduce_to_one_number_or_say_why_not() {
        let vector = serde_json::json!({"status":"success","data":{"resultType":"vector",
            "result":[{"metric":{},"value":[1700000000.1,"0.0123"]}]}});
        assert_eq!(scalar_of(&vector), Ok(0.0123));
        let scalar = serde_json::json!({"data":{"resultType":"scalar","result":[1.0,"7"]}});
        assert_eq!(scalar_of(&scalar), Ok(7.0));
        let empty = serde_json::json!({"data":{"resultType":"vector","result":[]}});
        assert!(scalar_of(&empty).unwrap_err().contains("no sample"));
        let nan = serde_json::json!({"data":{"resultType":"scalar","result":[1.0,"NaN"]}});
        assert!(scalar_of(&nan).unwrap_err().contains("NaN"));
    }

    #[test]
    fn amqp_urls_yield_credentials_and_vhost() {
        assert_eq!(
            amqp_parts("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("guest".into(), "guest".into(), "/".into())
        );
        assert_eq!(
            amqp_parts("amqps://a:b@h/prod?heartbeat=10"),
            ("a".into(), "b".into(), "prod".into())
        );
        assert_eq!(urlencode("/"), "%2F");
    }
}
