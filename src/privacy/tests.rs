use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::config::{PrivacyConfig, PrivacyRuleConfig};
use crate::event::{Limits, ValidationMode};

pub(crate) struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hmac"), [42u8; 32]).unwrap();
        std::fs::write(dir.path().join("hmac.old"), [41u8; 32]).unwrap();
        let (sk, pk) = Keeper::generate();
        std::fs::write(dir.path().join("keeper"), sk).unwrap();
        std::fs::write(dir.path().join("keeper.pub"), pk).unwrap();
        Keys { dir }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn rule(name: &str, select: &str, action: PrivacyAction) -> PrivacyRuleConfig {
    PrivacyRuleConfig {
        name: Some(name.into()),
        select: select.into(),
        types: Vec::new(),
        action,
        keep_last: (action == PrivacyAction::Mask).then_some(2),
        subject: (action == PrivacyAction::Encrypt).then(|| "$.data.resource.id".into()),
    }
}

/// One rule of each action (and a second `encrypt`).
pub(crate) fn five_rules(keys: &Keys) -> PrivacyConfig {
    PrivacyConfig {
        rules: vec![
            rule(
                "phone",
                "$.data.changes[?@.field=='phone']['old','new']",
                PrivacyAction::Drop,
            ),
            rule(
                "account",
                "$.data.changes[?@.field=='bank_account']['old','new']",
                PrivacyAction::Mask,
            ),
            rule(
                "actor-name",
                "$.data.actor.name",
                PrivacyAction::Pseudonymise,
            ),
            rule(
                "national-id",
                "$.data.changes[?@.field=='national_id']['old','new']",
                PrivacyAction::Encrypt,
            ),
            rule("address", "$.data.resource.address", PrivacyAction::Encrypt),
        ],
        hmac_key_file: Some(keys.path("hmac")),
        hmac_previous_key_files: vec![keys.path("hmac.old")],
        keeper_public_key_file: Some(keys.path("keeper.pub")),
        keeper_key_file: None,
        keys_database_url: None,
    }
}

fn event() -> Value {
    json!({
        "specversion": "1.0", "id": "e-1", "source": "urn:registry", "type": "org.openg2p.registry.updated",
        "time": "2026-11-01T10:00:00Z",
        "data": {
            "actor": {"id": "officer-7", "name": "Alice Officer"},
            "action": "update", "outcome": "success",
            "resource": {"type": "person", "id": "P-100", "address": "12 Long Road"},
            "changes": [
                {"field": "phone", "old": "0711111111", "new": "0722222222"},
                {"field": "bank_account", "old": "DE00123456789", "new": "DE00987654321"},
                {"field": "national_id", "old": "NID-OLD-1", "new": "NID-NEW-2"},
                {"field": "status", "old": "active", "new": "paused"}
            ]
        }
    })
}

fn normalized(v: &Value) -> crate::event::NormalizedEvent {
    let limits = Limits {
        mode: ValidationMode::Strict,
        max_future_skew: std::time::Duration::from_secs(3600),
        max_event_bytes: 1 << 20,
    };
    crate::event::normalize(v.clone(), chrono::Utc::now(), &limits).unwrap()
}

const SECRETS: [&str; 8] = [
    "0711111111",
    "0722222222",
    "DE00123456",
    "DE00987654",
    "Alice",
    "NID-OLD-1",
    "NID-NEW-2",
    "Long Road",
];

#[test]
fn ingest_applies_every_action_and_leaves_a_marker() {
    let keys = Keys::new();
    let p = Privacy::from_config(&five_rules(&keys)).unwrap();
    let mut ev = normalized(&event());
    p.at_ingest(&mut ev).unwrap();
    let text = String::from_utf8(ev.json.clone()).unwrap();
    for s in SECRETS {
        assert!(!text.contains(s), "{s} left in {text}");
    }
    let v: Value = serde_json::from_slice(&ev.json).unwrap();
    let changes = &v["data"]["changes"];
    assert_eq!(changes[0]["old"], "[dropped]");
    assert_eq!(changes[1]["new"], "***********21");
    assert!(
        changes[2]["old"]
            .as_str()
            .unwrap()
            .starts_with("sealed:v1:")
    );
    assert_eq!(changes[3]["new"], "paused", "unselected values stay");
    let name = v["data"]["actor"]["name"].as_str().unwrap();
    assert_eq!(name, p.hmac().unwrap().current.pseudonym("Alice Officer"));
    assert_eq!(
        v["data"]["_privacy"]["rules"],
        json!(["phone", "account", "actor-name", "national-id", "address"])
    );
    assert!(v["data"]["_privacy"]["keys"].as_object().unwrap().len() == 1);
    assert_eq!(v["id"], "e-1");
}

#[test]
fn events_of_other_types_are_untouched_bytes_and_all() {
    let keys = Keys::new();
    let mut c = five_rules(&keys);
    for r in &mut c.rules {
        r.types = vec!["org.other.*".into()];
    }
    let p = Privacy::from_config(&c).unwrap();
    let mut ev = normalized(&event());
    let before = ev.json.clone();
    p.at_ingest(&mut ev).unwrap();
    assert_eq!(ev.json, before);
}

#[test]
fn a_subject_that_does_not_resolve_drops_the_value() {
    let keys = Keys::new();
    let p = Privacy::from_config(&five_rules(&keys)).unwrap();
    let mut v = event();
    v["data"]["resource"].as_object_mut().unwrap().remove("id");
    let mut ev = normalized(&v);
    p.at_ingest(&mut ev).unwrap();
    let v: Value = serde_json::from_slice(&ev.json).unwrap();
    assert_eq!(v["data"]["changes"][2]["old"], "[dropped]");
    assert_eq!(v["data"]["resource"]["address"], "[dropped]");
}

#[test]
fn a_treated_actor_id_is_not_the_kafka_key() {
    let keys = Keys::new();
    let mut c = five_rules(&keys);
    c.rules = vec![rule(
        "actor",
        "$.data.actor.id",
        PrivacyAction::Pseudonymise,
    )];
    let p = Privacy::from_config(&c).unwrap();
    let mut ev = normalized(&event());
    assert_eq!(ev.key.as_deref(), Some("officer-7"));
    p.at_ingest(&mut ev).unwrap();
    assert!(ev.key.unwrap().starts_with("hmac-sha256:"));
}

fn writer(keys: &Keys, subject_keys: Arc<subject_keys::MemoryKeys>) -> Privacy {
    let mut c = five_rules(keys);
    c.keeper_key_file = Some(keys.path("keeper"));
    c.keeper_public_key_file = None;
    Privacy::from_config(&c)
        .unwrap()
        .with_subject_keys(subject_keys)
}

#[test]
fn the_writer_reencrypts_under_subject_keys_and_never_applies_rules_twice() {
    let keys = Keys::new();
    let ingest = Privacy::from_config(&five_rules(&keys)).unwrap();
    let mem = Arc::new(subject_keys::MemoryKeys::default());
    let w = writer(&keys, mem.clone());
    let mut ev = normalized(&event());
    ingest.at_ingest(&mut ev).unwrap();
    let stored = w.at_store(&ev.json).unwrap().into_owned();
    let text = String::from_utf8(stored.clone()).unwrap();
    assert!(!text.contains("sealed:v1:"), "{text}");
    assert!(
        !text.contains("\"keys\""),
        "wrapped data keys are not stored"
    );
    for s in SECRETS {
        assert!(!text.contains(s), "{s} left in {text}");
    }
    let v: Value = serde_json::from_slice(&stored).unwrap();
    let name_at_ingest = v["data"]["actor"]["name"].clone();
    let enc = v["data"]["changes"][2]["old"].as_str().unwrap();
    let (kid, body) = subject_keys::parse(enc).unwrap();
    let key = mem.key_by_id(kid).unwrap().unwrap();
    let plain = subject_keys::decrypt(&key, &body, "e-1", "/data/changes/2/old").unwrap();
    assert_eq!(plain, json!("NID-OLD-1"));
    // Storing again (a redelivery) changes nothing more: the marker says the rules ran.
    let again = w.at_store(&stored).unwrap();
    let v2: Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(v2["data"]["actor"]["name"], name_at_ingest);
    assert_eq!(v2["data"]["changes"][1], v["data"]["changes"][1]);
}

#[test]
fn the_writer_applies_rules_to_records_that_skipped_ingest() {
    let keys = Keys::new();
    let mem = Arc::new(subject_keys::MemoryKeys::default());
    let w = writer(&keys, mem);
    let raw = serde_json::to_vec(&event()).unwrap();
    let stored = w.at_store(&raw).unwrap().into_owned();
    let text = String::from_utf8(stored).unwrap();
    for s in SECRETS {
        assert!(!text.contains(s), "{s} left in {text}");
    }
    assert!(text.contains("enc:v1:"));
    assert!(text.contains("\"_privacy\""));
}

#[test]
fn a_forgotten_subject_is_stored_erased() {
    let keys = Keys::new();
    let mem = Arc::new(subject_keys::MemoryKeys::default());
    let w = writer(&keys, mem.clone());
    mem.forget(&w.hmac().unwrap().current.pseudonym("P-100"));
    let raw = serde_json::to_vec(&event()).unwrap();
    let stored = w.at_store(&raw).unwrap();
    let v: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(v["data"]["changes"][2]["new"], ERASED);
    assert_eq!(v["data"]["resource"]["address"], ERASED);
}

#[test]
fn bad_configuration_names_the_rule() {
    let keys = Keys::new();
    let mut c = five_rules(&keys);
    c.rules[1].select = "$.data[".into();
    let e = Privacy::from_config(&c).unwrap_err();
    assert_eq!(e.key(), "privacy.rules[1].select");
    assert!(e.to_string().contains("\"account\""), "{e}");

    let mut c = five_rules(&keys);
    c.keeper_public_key_file = None;
    let e = Privacy::from_config(&c).unwrap_err();
    assert!(e.to_string().contains("\"national-id\""), "{e}");
    assert!(e.to_string().contains("keeper"), "{e}");

    let mut c = five_rules(&keys);
    std::fs::write(keys.path("short"), [1u8; 16]).unwrap();
    c.hmac_key_file = Some(keys.path("short"));
    let e = Privacy::from_config(&c).unwrap_err();
    assert_eq!(e.key(), "privacy.hmac_key_file");

    let mut c = five_rules(&keys);
    c.hmac_key_file = Some(keys.path("missing"));
    assert!(Privacy::from_config(&c).is_err());
}

mod property {
    use super::*;
    use proptest::prelude::*;

    /// A secret: a prefix no other part of an event has, then random characters.
    fn secret() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]{12,24}".prop_map(|s| format!("SECRET{s}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// Random values under random subsets of the rules, single values or whole objects:
        /// nothing a rule selected is left in the bytes to spool, nor after the writer's step.
        #[test]
        fn no_selected_value_survives(
            phone in secret(), account in secret(), name in secret(), nid in secret(),
            address in secret(), keep in proptest::collection::vec(any::<bool>(), 5),
            nested in any::<bool>(),
        ) {
            let keys = Keys::new();
            let mut c = five_rules(&keys);
            let mut kept = keep.iter();
            c.rules.retain(|_| *kept.next().unwrap_or(&true));
            let p = Privacy::from_config(&c).unwrap();
            let names: Vec<&str> = c.rules.iter().filter_map(|r| r.name.as_deref()).collect();
            let mut v = event();
            v["data"]["changes"][0]["old"] = json!(phone);
            v["data"]["changes"][1]["new"] = json!(account);
            v["data"]["actor"]["name"] = json!(name);
            v["data"]["changes"][2]["old"] = json!(nid);
            // A whole object selected (encrypted whole) or a string.
            v["data"]["resource"]["address"] =
                if nested { json!({"line": address, "n": 7}) } else { json!(address) };
            let mut ev = normalized(&v);
            p.at_ingest(&mut ev).unwrap();
            let spooled = String::from_utf8(ev.json.clone()).unwrap();
            let selected = [
                ("phone", &phone), ("account", &account), ("actor-name", &name),
                ("national-id", &nid), ("address", &address),
            ];
            for (rule, s) in selected {
                // A masked value keeps its last 2 characters, by design.
                let probe = if rule == "account" { &s[..s.len() - 2] } else { s.as_str() };
                prop_assert_eq!(
                    spooled.contains(probe), !names.contains(&rule),
                    "rule {} value {} in {}", rule, s, spooled
                );
            }
            let w = writer_with(&keys, &c);
            let stored = String::from_utf8(w.at_store(&ev.json).unwrap().into_owned()).unwrap();
            for (rule, s) in selected {
                let probe = if rule == "account" { &s[..s.len() - 2] } else { s.as_str() };
                prop_assert_eq!(stored.contains(probe), !names.contains(&rule));
            }
        }
    }

    /// Rules of deterministic actions over paths of every shape: plain names, filters, a
    /// filter reading the root, descendants, wildcards, the Kafka key's members.
    const PATHS: [(&str, PrivacyAction); 8] = [
        ("$.data.actor.name", PrivacyAction::Pseudonymise),
        (
            "$.data.changes[?@.field=='phone']['old','new']",
            PrivacyAction::Drop,
        ),
        (
            "$.data.changes[?@.field==$.data.action].old",
            PrivacyAction::Mask,
        ),
        ("$..address", PrivacyAction::Mask),
        ("$.data.changes[*].new", PrivacyAction::Pseudonymise),
        ("$.subject", PrivacyAction::Drop),
        ("$.data.actor.id", PrivacyAction::Mask),
        ("$.data.changes[1]", PrivacyAction::Drop),
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// Whatever the rules and the event, treating the event in its bytes stores the event
        /// (and Kafka key) that treating its whole tree stores.
        #[test]
        fn in_place_treatment_stores_what_the_whole_tree_would(
            keep in proptest::collection::vec(any::<bool>(), PATHS.len()),
            field in prop::sample::select(vec!["phone", "update", "status"]),
            subject in any::<bool>(),
            forged_marker in any::<bool>(),
        ) {
            // Without rules nothing is treated (no marker either).
            prop_assume!(keep.iter().any(|k| *k));
            let keys = Keys::new();
            let mut c = five_rules(&keys);
            c.rules = PATHS
                .iter()
                .zip(&keep)
                .enumerate()
                .filter(|(_, (_, k))| **k)
                .map(|(i, ((path, action), _))| rule(&format!("r{i}"), path, *action))
                .collect();
            let p = Privacy::from_config(&c).unwrap();
            let mut v = event();
            v["data"]["changes"][3]["field"] = json!(field);
            if subject {
                v["subject"] = json!("beneficiary/9");
            }
            if forged_marker {
                v["data"][MARKER] = json!("sent by the emitter");
            }
            let mut ev = normalized(&v);
            let mut whole: Value = serde_json::from_slice(&ev.json).unwrap();
            p.apply(&mut whole, &ev.id, Stage::Ingest).unwrap();
            p.at_ingest(&mut ev).unwrap();
            let stored: Value = serde_json::from_slice(&ev.json).unwrap();
            prop_assert_eq!(&stored, &whole);
            prop_assert_eq!(
                serde_json::to_string(&stored).unwrap(),
                serde_json::to_string(&whole).unwrap()
            );
            let key = whole.as_object().and_then(crate::event::kafka_key);
            prop_assert_eq!(ev.key, key);
        }
    }

    fn writer_with(keys: &Keys, c: &PrivacyConfig) -> Privacy {
        let mut c = c.clone();
        c.keeper_key_file = Some(keys.path("keeper"));
        Privacy::from_config(&c)
            .unwrap()
            .with_subject_keys(Arc::new(subject_keys::MemoryKeys::default()))
    }
}

#[test]
fn swapped_ciphertexts_fail_authentication_never_read_as_another_value() {
    let keys = Keys::new();
    let mem = Arc::new(subject_keys::MemoryKeys::default());
    let w = writer(&keys, mem.clone());
    let raw = serde_json::to_vec(&event()).unwrap();
    let stored: Value = serde_json::from_slice(&w.at_store(&raw).unwrap()).unwrap();
    let mut other = event();
    other["id"] = json!("e-2");
    let other: Value =
        serde_json::from_slice(&w.at_store(&serde_json::to_vec(&other).unwrap()).unwrap()).unwrap();
    // Rows as the query API renders them: `details` is `data` less the columns.
    let row = |v: &Value| {
        let mut details = v["data"].clone();
        details.as_object_mut().unwrap().remove("action");
        details.as_object_mut().unwrap().remove("outcome");
        json!({"id": v["id"], "details": details})
    };
    let view = read::View {
        pii: true,
        keys: Some(mem.clone()),
    };
    let mut honest = row(&stored);
    assert_eq!(view.row(&mut honest).plaintext, 3);
    assert_eq!(honest["details"]["changes"][2]["old"], "NID-OLD-1");
    assert_eq!(honest["details"]["resource"]["address"], "12 Long Road");
    // Two fields of one row swapped.
    let mut swapped = row(&stored);
    let (a, b) = (
        swapped["details"]["changes"][2]["old"].clone(),
        swapped["details"]["changes"][2]["new"].clone(),
    );
    swapped["details"]["changes"][2]["old"] = b;
    swapped["details"]["changes"][2]["new"] = a;
    let r = view.row(&mut swapped);
    assert_eq!(r.tampered, 2);
    assert_eq!(swapped["details"]["changes"][2]["old"], read::TAMPERED);
    // The same field moved from another row.
    let mut moved = row(&stored);
    moved["details"]["changes"][2]["old"] = other["data"]["changes"][2]["old"].clone();
    let r = view.row(&mut moved);
    assert_eq!(r.tampered, 1);
    assert_eq!(moved["details"]["changes"][2]["old"], read::TAMPERED);
    // Without `pii`: no plaintext, whatever the row holds.
    let mut hidden = row(&stored);
    let r = read::View {
        pii: false,
        keys: Some(mem.clone()),
    }
    .row(&mut hidden);
    assert_eq!(r.plaintext, 0);
    assert_eq!(hidden["details"]["changes"][2]["old"], ENCRYPTED);
    // Forgotten: erased for everyone.
    mem.forget(&w.hmac().unwrap().current.pseudonym("P-100"));
    let mut gone = row(&stored);
    view.row(&mut gone);
    assert_eq!(gone["details"]["changes"][2]["old"], ERASED);
}
