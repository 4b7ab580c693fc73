//! Binary mode: arbitrary `ce-*` headers, Content-Type and body into a structured event, then
//! validation in both modes. Never panics; what it builds obeys the same properties as a
//! structured body.
#![no_main]

use arbitrary::Arbitrary;
use audit_manager::event::from_binary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Name, Vec<u8>)>,
    content_type: Option<String>,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(String),
}

const NAMES: &[&str] = &[
    "ce-specversion",
    "CE-ID",
    "ce-source",
    "Ce-Type",
    "ce-subject",
    "ce-time",
    "ce-traceparent",
    "ce-datacontenttype",
    "ce-data",
    "ce-",
    "ce-tenant",
    "content-type",
];

fuzz_target!(|input: Input| {
    let names: Vec<String> = input
        .headers
        .iter()
        .map(|(n, _)| match n {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
            Name::Any(s) => s.clone(),
        })
        .collect();
    let pairs = names
        .iter()
        .zip(&input.headers)
        .map(|(n, (_, v))| (n.as_str(), v.as_slice()));
    if let Ok(value) = from_binary(pairs, input.content_type.as_deref(), &input.body) {
        audit_manager_fuzz::check_value(value);
    }
});
