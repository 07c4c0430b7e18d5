//! Whatever the bytes, decoding and ingesting never panics: anything that is not a
//! valid events-v1 event becomes exactly one `event.malformed` finding.

use assayer::core::engine::{Engine, Outcome};
use assayer::core::event::decode;
use assayer::core::finding::Invariant;
use assayer::core::policy::Policy;
use assayer::core::time::Timestamp;
use proptest::prelude::*;

const VALID: &str = r#"{"v":1,"tx_id":"trade-000815","realm":"eu-1","system":"trade","seq":815,"ts":"2026-11-27T08:00:00.120Z","kind":"trade.settle","actor":"player:42","grant":"quest:1:player:42","postings":[{"account":"player:42","asset":"gold","delta":-150},{"account":"player:77","asset":"gold","delta":150}],"items":[{"item":"itm:9f2c01","from":"player:77/bag","to":"player:42/bag","template":"sword_of_dawn"}]}"#;

fn check(bytes: &[u8]) {
    let mut engine = Engine::new(Policy::builtin());
    let mut out = Vec::new();
    let outcome = engine.ingest(bytes, Timestamp(0), &mut out);
    engine.finish(Timestamp(0), &mut out);
    match decode(bytes) {
        Ok(_) => assert_ne!(outcome, Outcome::Malformed),
        Err(m) => {
            assert_eq!(outcome, Outcome::Malformed);
            assert!(!m.reason.is_empty());
            let malformed: Vec<_> = out
                .iter()
                .filter(|f| f.invariant == Invariant::Malformed)
                .collect();
            assert_eq!(malformed.len(), 1, "{out:#?}");
            assert_eq!(
                out.len(),
                1,
                "a malformed event raises nothing else: {out:#?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn mutated_valid_events_never_panic(
        edits in proptest::collection::vec((0usize..VALID.len(), any::<u8>()), 1..6),
        cut in 0usize..=VALID.len(),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, b) in edits {
            bytes[at] = b;
        }
        bytes.truncate(cut.max(1));
        check(&bytes);
    }

    #[test]
    fn arbitrary_json_values_never_panic(v in arb_json()) {
        check(v.to_string().as_bytes());
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[a-z:/_0-9 -]{0,12}".prop_map(serde_json::Value::from),
    ];
    let keys = prop_oneof![
        Just("v".to_string()),
        Just("tx_id".to_string()),
        Just("realm".to_string()),
        Just("system".to_string()),
        Just("seq".to_string()),
        Just("ts".to_string()),
        Just("kind".to_string()),
        Just("postings".to_string()),
        Just("items".to_string()),
        Just("account".to_string()),
        Just("asset".to_string()),
        Just("delta".to_string()),
        Just("item".to_string()),
        Just("from".to_string()),
        Just("to".to_string()),
        "[a-z]{1,4}",
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(keys.clone(), inner, 0..10)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn the_valid_sample_is_valid() {
    assert!(decode(VALID.as_bytes()).is_ok());
}
