//! `audit-loadgen`: HTTP load generator for benchmarking audit-manager.
//!
//! Sends synthetic CloudEvents 1.0 audit events to a running audit-manager, either one per
//! request (`POST /v1/auditmanager/events`) or in batches (`POST /v1/auditmanager/events/batch`),
//! from `--concurrency` worker tasks that claim events from a shared atomic counter and share one
//! keep-alive connection pool. Each worker has at most one request in flight, so C workers keep
//! C HTTP/1.1 connections busy at once. Event bodies are formatted from a template (no
//! serializer) and the runtime is single-threaded, so the generator uses at most one core.
//!
//! Every request's latency (send until the response body is read) goes into an HDR histogram in
//! microseconds; responses are counted by HTTP status, transport errors separately. The summary
//! goes to stdout (plus one JSON object with `--json`); "events/s" counts accepted events.
//!
//! Exit code: 0 if every event sent got a 202 (with `--retry-503`, eventually), 1 if any did not
//! (the reason goes to stderr), 2 if the run could not start (bad URL, unwritable id file).
//!
//! Event ids are `PREFIX-<counter>`, with a fresh UUID v4 prefix per run unless `--id-prefix` is
//! given, so they are unique across runs; `--accepted-ids FILE` appends every id that got a 202
//! (one per line, unordered), e.g. to check afterwards that each of them reached the store.
//! `--verify` does that check itself: after the run it waits (up to `--verify-timeout`) until
//! every id that got a 202 in this run is in `audit_events` (`--database-url`, else
//! `$DATABASE_URL`) and fails unless each is there exactly once.
//!
//! Example (server on the default port, 200k events in batches of 50 over 32 connections):
//!
//! ```text
//! cargo run --release -p audit-loadgen -- --url http://127.0.0.1:8000 \
//!     --events 200000 --batch-size 50 --concurrency 32 --accepted-ids /tmp/accepted.txt --json
//! ```
//!
//! Only point it at a server on this machine (loopback) or a test host of your own.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Path prefix of the audit-manager API, appended to `--url` unless already there.
const API_PREFIX: &str = "/v1/auditmanager";
/// Upper bound of one request (connect + send + full response), so a stuck server cannot hang us.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// With `--retry-503`, give up on a request after this many 503s in a row.
const MAX_503_RETRIES: u32 = 100;
/// Wait used when a 503 carries no usable `Retry-After` (or an HTTP-date one).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Bounds applied to `Retry-After` so a `0` cannot spin and a huge value cannot stall the run.
const MIN_RETRY_WAIT: Duration = Duration::from_millis(10);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Highest latency the histogram tracks (larger values are clamped), in microseconds.
const HIST_MAX_US: u64 = 3_600_000_000;
/// How much of a non-202 response body is kept to explain a failure.
const BODY_SNIPPET_CHARS: usize = 300;
/// Event kinds cycled through so `type`/`action` vary: (CloudEvents type, action).
const KINDS: [(&str, &str); 3] = [
    ("org.openg2p.beneficiary.updated", "beneficiary.update"),
    ("org.openg2p.beneficiary.created", "beneficiary.create"),
    ("org.openg2p.beneficiary.viewed", "beneficiary.view"),
];

/// Load generator for audit-manager: POSTs CloudEvents audit events and reports
/// throughput, latency percentiles and response statuses.
#[derive(Debug, Parser)]
#[command(name = "audit-loadgen", version, about)]
struct Args {
    /// Base URL of the server; `/v1/auditmanager` is appended unless the URL already ends in it.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,

    /// Total number of events to send.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,

    /// Number of worker tasks, each with one request in flight (so this many connections).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    concurrency: u64,

    /// Events per request: 1 = single-event POSTs to /events, >1 = POSTs to /events/batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch_size: u64,

    /// Number of distinct subjects and actors the events are spread over, so keys vary.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    subjects: u64,

    /// Stop sending new requests after this many seconds (fractions allowed), whichever of
    /// this and --events comes first; requests already in flight still complete.
    #[arg(long, value_name = "SECS", value_parser = parse_duration_secs)]
    duration: Option<Duration>,

    /// Offer at most this many events per second (an open-loop schedule: event n is sent no
    /// earlier than n / RATE seconds after the start). Default: as fast as the server answers.
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,

    /// Append the id of every event that got a 202 to FILE, one per line (unordered).
    #[arg(long, value_name = "FILE")]
    accepted_ids: Option<PathBuf>,

    /// Prefix of event ids, which are PREFIX-<counter>; default: a fresh UUID v4 per run.
    #[arg(long, value_name = "STR")]
    id_prefix: Option<String>,

    /// Send `Authorization: Bearer TOKEN` (a service with auth.mode token). Also read from
    /// $AUDIT_LOADGEN_TOKEN, which keeps it out of the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "AUDIT_LOADGEN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// On 503, wait for Retry-After and resend the same events (default: count it as failed).
    #[arg(long)]
    retry_503: bool,

    /// Also print the summary as one JSON object on a line of its own (after the text).
    #[arg(long)]
    json: bool,

    /// After the run, check that every event that got a 202 is in `audit_events` exactly once
    /// (waiting up to --verify-timeout for the pipeline to deliver); exit 1 if not.
    #[arg(long)]
    verify: bool,

    /// PostgreSQL holding `audit_events`, for --verify.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost:5432/auditmanager",
        value_name = "URL"
    )]
    database_url: String,

    /// How long --verify waits for the accepted events to reach the database.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_duration_secs)]
    verify_timeout: Duration,
}

fn parse_duration_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("not a number of seconds: {e}"))?;
    if secs <= 0.0 {
        return Err("must be greater than 0".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Everything the workers share, read-only apart from the claim counter.
struct Shared {
    client: reqwest::Client,
    /// `/events` or `/events/batch`, depending on the batch size.
    endpoint: reqwest::Url,
    /// `Authorization` header value for `--token`.
    authorization: Option<HeaderValue>,
    batch_size: u64,
    total_events: u64,
    subjects: u64,
    /// Id prefix, escaped for direct use inside a JSON string.
    id_prefix_json: String,
    retry_503: bool,
    deadline: Option<Instant>,
    /// `--rate`: when the run started, and events per second.
    pace: Option<(Instant, u64)>,
    /// Next event number not yet claimed by a worker.
    next_event: AtomicU64,
    /// Accepted event numbers, kept for --verify.
    accepted: Option<std::sync::Mutex<Vec<Range<u64>>>>,
}

impl Shared {
    /// Claims the next range of event numbers for one request, or `None` when done.
    fn claim(&self) -> Option<Range<u64>> {
        if self.deadline_passed() {
            return None;
        }
        let start = self
            .next_event
            .fetch_add(self.batch_size, Ordering::Relaxed);
        (start < self.total_events)
            .then(|| start..start.saturating_add(self.batch_size).min(self.total_events))
    }

    /// When the request starting at event `start` is due under `--rate` (`None`: now).
    fn due(&self, start: u64) -> Option<Instant> {
        let (t0, rate) = self.pace?;
        Some(t0 + Duration::from_secs_f64(start as f64 / rate as f64))
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Builds the (cloneable, in-memory) request carrying events `range`.
    fn request(&self, range: Range<u64>, rng: &mut StdRng) -> RequestBuilder {
        let time = rfc3339_millis(SystemTime::now());
        let body = if self.batch_size == 1 {
            let mut body = String::with_capacity(640);
            self.write_event(&mut body, range.start, &time, rng);
            body
        } else {
            let mut body = String::with_capacity(16 + 640 * (range.end - range.start) as usize);
            body.push_str(r#"{"events":["#);
            for (i, seq) in range.enumerate() {
                if i > 0 {
                    body.push(',');
                }
                self.write_event(&mut body, seq, &time, rng);
            }
            body.push_str("]}");
            body
        };
        let request = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    fn write_event(&self, out: &mut String, seq: u64, time: &str, rng: &mut StdRng) {
        let (ty, action) = KINDS[(seq % KINDS.len() as u64) as usize];
        let event = EventFields {
            prefix: &self.id_prefix_json,
            seq,
            time,
            ty,
            action,
            subject: rng.random_range(0..self.subjects),
            actor: rng.random_range(0..self.subjects),
        };
        event.write_json(out);
    }
}

/// The varying parts of one synthetic event.
struct EventFields<'a> {
    /// Id prefix, already JSON-escaped.
    prefix: &'a str,
    seq: u64,
    time: &'a str,
    ty: &'a str,
    action: &'a str,
    subject: u64,
    actor: u64,
}

impl EventFields<'_> {
    /// Appends the event as CloudEvents JSON, with a template instead of a serializer for speed.
    fn write_json(&self, out: &mut String) {
        let Self {
            prefix,
            seq,
            time,
            ty,
            action,
            subject,
            actor,
        } = self;
        let (a, b, c) = ((actor >> 16) & 0xff, (actor >> 8) & 0xff, actor & 0xff);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            concat!(
                r#"{{"specversion":"1.0","id":"{prefix}-{seq}","source":"urn:openg2p:registry","#,
                r#""type":"{ty}","subject":"beneficiary/{subject}","time":"{time}","#,
                r#""data":{{"actor":{{"type":"user","id":"user-{actor}","#,
                r#""name":"Load User {actor}","roles":["officer"],"ip":"10.{a}.{b}.{c}"}},"#,
                r#""action":"{action}","outcome":"success","#,
                r#""resource":{{"type":"beneficiary","id":"{subject}"}},"#,
                r#""changes":[{{"field":"phone","old":"x","new":"{seq}"}}]}}}}"#,
            ),
            prefix = prefix,
            seq = seq,
            ty = ty,
            subject = subject,
            time = time,
            actor = actor,
            a = a,
            b = b,
            c = c,
            action = action,
        );
    }
}

/// Formats `t` as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T23:59:59.123Z`.
fn rfc3339_millis(t: SystemTime) -> String {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What one worker observed; merged into the run's totals at the end.
struct Stats {
    /// Request latency in microseconds, for requests that got an HTTP response.
    latency_us: Histogram<u64>,
    /// Responses by HTTP status code (every attempt, including retried 503s).
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    requests: u64,
    /// Events claimed and sent at least once.
    events: u64,
    /// Events whose request got a 202.
    accepted: u64,
    /// 503s that were followed by a resend (`--retry-503`).
    retried_503: u64,
    /// First failure seen, to explain a non-zero exit.
    first_failure: Option<String>,
}

impl Stats {
    fn new() -> Result<Self> {
        Ok(Self {
            latency_us: Histogram::new_with_bounds(1, HIST_MAX_US, 3)?,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            requests: 0,
            events: 0,
            accepted: 0,
            retried_503: 0,
            first_failure: None,
        })
    }

    fn merge(&mut self, other: Stats) -> Result<()> {
        self.latency_us.add(&other.latency_us)?;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.requests += other.requests;
        self.events += other.events;
        self.accepted += other.accepted;
        self.retried_503 += other.retried_503;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        Ok(())
    }

    fn note_failure(&mut self, what: impl FnOnce() -> String) {
        if self.first_failure.is_none() {
            self.first_failure = Some(what());
        }
    }
}

/// Result of one HTTP attempt.
enum Attempt {
    Accepted,
    /// 503, with how long the server asked us to wait.
    Unavailable(Duration),
    Failed,
}

/// One worker: claims ranges of events until none are left (or the deadline passes),
/// sends each as one request, and reports accepted ranges to the id collector.
async fn worker(shared: Arc<Shared>, ids_tx: Option<UnboundedSender<Range<u64>>>) -> Result<Stats> {
    let mut stats = Stats::new()?;
    let mut rng = StdRng::from_os_rng();
    while let Some(range) = shared.claim() {
        if let Some(due) = shared.due(range.start) {
            tokio::time::sleep_until(due.into()).await;
        }
        let n = range.end - range.start;
        stats.events += n;
        let request = shared.request(range.clone(), &mut rng);
        if send_with_retry(&shared, request, &mut stats).await {
            stats.accepted += n;
            if let Some(acc) = &shared.accepted
                && let Ok(mut acc) = acc.lock()
            {
                acc.push(range.clone());
            }
            if let Some(tx) = &ids_tx {
                // The collector only stops after all senders are gone.
                let _ = tx.send(range);
            }
        }
    }
    Ok(stats)
}

/// Sends `request`, resending it after 503s when `--retry-503` is on; true once it got a 202.
async fn send_with_retry(shared: &Shared, mut request: RequestBuilder, stats: &mut Stats) -> bool {
    let mut retries = 0;
    loop {
        // Only pay for a copy of the request when it may be resent.
        let spare = if shared.retry_503 {
            request.try_clone()
        } else {
            None
        };
        match send_once(request, stats).await {
            Attempt::Accepted => return true,
            Attempt::Failed => return false,
            Attempt::Unavailable(wait) => {
                let resume = Instant::now() + wait;
                let Some(again) = spare else { return false };
                if retries >= MAX_503_RETRIES || shared.deadline.is_some_and(|d| resume >= d) {
                    return false;
                }
                retries += 1;
                stats.retried_503 += 1;
                tokio::time::sleep_until(resume.into()).await;
                request = again;
            }
        }
    }
}

/// Performs one HTTP request, reading the whole response so the connection is reused.
async fn send_once(request: RequestBuilder, stats: &mut Stats) -> Attempt {
    let started = Instant::now();
    stats.requests += 1;
    let reply = match exchange(request).await {
        Ok(reply) => reply,
        Err(e) => {
            stats.transport_errors += 1;
            stats.note_failure(|| format!("transport error: {}", error_chain(&e)));
            return Attempt::Failed;
        }
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    stats.latency_us.saturating_record(micros.max(1));
    *stats.statuses.entry(reply.status.as_u16()).or_default() += 1;
    if reply.status == StatusCode::ACCEPTED {
        return Attempt::Accepted;
    }
    stats.note_failure(|| format!("HTTP {}: {}", reply.status, snippet(&reply.error_body)));
    match reply.retry_after {
        Some(wait) => Attempt::Unavailable(wait),
        None => Attempt::Failed,
    }
}

/// The parts of a response the generator looks at.
struct Reply {
    status: StatusCode,
    /// For a 503: how long to wait before resending.
    retry_after: Option<Duration>,
    /// The body of a non-202 response (empty for a 202, which is read and dropped).
    error_body: Vec<u8>,
}

async fn exchange(request: RequestBuilder) -> reqwest::Result<Reply> {
    let response = request.send().await?;
    let status = response.status();
    let retry_after =
        (status == StatusCode::SERVICE_UNAVAILABLE).then(|| retry_after(response.headers()));
    let body = response.bytes().await?;
    let error_body = if status == StatusCode::ACCEPTED {
        Vec::new()
    } else {
        body.to_vec()
    };
    Ok(Reply {
        status,
        retry_after,
        error_body,
    })
}

/// A transport error with its sources, e.g. `error sending request: connection refused`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(BODY_SNIPPET_CHARS).collect();
    if text.chars().count() > BODY_SNIPPET_CHARS {
        out.push('…');
    }
    out
}

/// The wait a 503 asks for: `Retry-After` in seconds, clamped; HTTP-dates use the default.
fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
        .clamp(MIN_RETRY_WAIT, MAX_RETRY_WAIT)
}

/// Writes `PREFIX-<n>` for every accepted event number, buffered; returns how many were written.
fn collect_ids(file: File, prefix: &str, mut rx: UnboundedReceiver<Range<u64>>) -> Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut written = 0;
    while let Some(range) = rx.blocking_recv() {
        for seq in range {
            writeln!(out, "{prefix}-{seq}")?;
            written += 1;
        }
    }
    out.flush()?;
    out.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    Ok(written)
}

/// `--url` plus the API prefix and the endpoint for the batch size, validated.
fn endpoint_url(base: &str, batch_size: u64) -> Result<reqwest::Url> {
    let base = base.trim_end_matches('/');
    let api = if base.ends_with(API_PREFIX) {
        base.to_owned()
    } else {
        format!("{base}{API_PREFIX}")
    };
    let path = if batch_size > 1 {
        "/events/batch"
    } else {
        "/events"
    };
    let url = format!("{api}{path}");
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("invalid --url {base:?}"))?;
    if parsed.scheme() != "http" {
        // reqwest is built without TLS here, and a local benchmark does not need it.
        return Err(anyhow!("--url must be plain http://, got {base:?}"));
    }
    Ok(parsed)
}

fn build_client(concurrency: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        // A redirect is a misconfiguration to report (as a non-202), not to follow.
        .redirect(reqwest::redirect::Policy::none())
        // A benchmark talks to the server directly, whatever HTTP_PROXY says.
        .no_proxy()
        .build()
        .context("building HTTP client")
}

fn open_ids_file(path: &PathBuf) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening --accepted-ids file {}", path.display()))
}

/// Totals of a finished run, with what the summary needs.
struct Report {
    stats: Stats,
    elapsed: Duration,
    batch_size: u64,
    concurrency: u64,
    endpoint: String,
    id_prefix: String,
    ids_written: Option<u64>,
    verified: Option<Verified>,
}

impl Report {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_us(&self, q: f64) -> u64 {
        self.stats.latency_us.value_at_quantile(q)
    }

    /// Why the run failed, or `None` if every event sent got a 202.
    fn failure(&self) -> Option<String> {
        let s = &self.stats;
        if s.events == 0 {
            return Some("no event was sent".into());
        }
        if let Some(v) = self.verified.as_ref().filter(|v| !v.ok()) {
            return Some(format!(
                "verify: {} of {} accepted events missing from audit_events, {} stored more than \
                 once (first missing: {:?}, first duplicated: {:?})",
                v.missing.len(),
                v.accepted,
                v.duplicated.len(),
                v.missing.first(),
                v.duplicated.first()
            ));
        }
        if s.accepted == s.events {
            return None;
        }
        let mut why = format!(
            "{} of {} events not accepted",
            s.events - s.accepted,
            s.events
        );
        let non_202: Vec<String> = s
            .statuses
            .iter()
            .filter(|(status, _)| **status != 202)
            .map(|(status, n)| format!("{status}={n}"))
            .collect();
        if !non_202.is_empty() {
            let _ = write!(why, "; non-202 responses: {}", non_202.join(" "));
        }
        if s.transport_errors > 0 {
            let _ = write!(why, "; {} transport errors", s.transport_errors);
        }
        if let Some(first) = &s.first_failure {
            let _ = write!(why, "; first: {first}");
        }
        Some(why)
    }

    fn print_text(&self) {
        let s = &self.stats;
        println!(
            "audit-loadgen: {} events in {} requests (batch {}, concurrency {}) in {:.3}s",
            s.events,
            s.requests,
            self.batch_size,
            self.concurrency,
            self.elapsed.as_secs_f64()
        );
        println!(
            "throughput: {:.0} events/s, {:.0} requests/s",
            self.per_sec(s.accepted),
            self.per_sec(s.requests)
        );
        if s.latency_us.is_empty() {
            println!("latency per request: no responses");
        } else {
            println!(
                "latency per request: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                fmt_us(self.percentile_us(0.50)),
                fmt_us(self.percentile_us(0.90)),
                fmt_us(self.percentile_us(0.99)),
                fmt_us(self.percentile_us(0.999)),
                fmt_us(s.latency_us.max())
            );
        }
        let statuses: Vec<String> = s
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}={n}"))
            .collect();
        println!(
            "status: {}",
            if statuses.is_empty() {
                "none".into()
            } else {
                statuses.join(" ")
            }
        );
        if s.retried_503 > 0 {
            println!("retried: {} requests after 503", s.retried_503);
        }
        println!("errors: {} transport", s.transport_errors);
        if s.accepted != s.events {
            println!("accepted: {} of {} events", s.accepted, s.events);
        }
        if let Some(n) = self.ids_written {
            println!("accepted ids written: {n}");
        }
        if let Some(v) = &self.verified {
            println!(
                "verify: {} of {} accepted events in audit_events exactly once",
                v.accepted - v.missing.len() as u64 - v.duplicated.len() as u64,
                v.accepted
            );
            if let Some(after) = v.stored_after {
                println!(
                    "end to end: all stored {:.3}s after the first request = {:.0} events/s \
                     HTTP -> PostgreSQL ({:.3}s after the last answer)",
                    after.as_secs_f64(),
                    v.accepted as f64 / after.as_secs_f64().max(1e-9),
                    after.saturating_sub(self.elapsed).as_secs_f64()
                );
            }
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let statuses: serde_json::Map<String, serde_json::Value> = s
            .statuses
            .iter()
            .map(|(status, n)| (status.to_string(), (*n).into()))
            .collect();
        let latency = (!s.latency_us.is_empty()).then(|| {
            serde_json::json!({
                "p50": self.percentile_us(0.50),
                "p90": self.percentile_us(0.90),
                "p99": self.percentile_us(0.99),
                "p999": self.percentile_us(0.999),
                "max": s.latency_us.max(),
                "mean": s.latency_us.mean(),
            })
        });
        serde_json::json!({
            "endpoint": self.endpoint,
            "id_prefix": self.id_prefix,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "events": s.events,
            "accepted_events": s.accepted,
            "requests": s.requests,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "events_per_s": self.per_sec(s.accepted),
            "requests_per_s": self.per_sec(s.requests),
            "latency_us": latency,
            "status": statuses,
            "transport_errors": s.transport_errors,
            "retried_503": s.retried_503,
            "accepted_ids_written": self.ids_written,
            "verified": self.verified.as_ref().map(|v| serde_json::json!({
                "accepted": v.accepted,
                "missing": v.missing.len(),
                "duplicated": v.duplicated.len(),
                "stored_after_s": v.stored_after.map(|d| d.as_secs_f64()),
            })),
            "ok": self.failure().is_none(),
            "failure": self.failure(),
        })
    }
}

/// Microseconds as `850us`, `1.9ms` or `1.25s`.
fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

async fn run(args: Args) -> Result<Report> {
    let endpoint = endpoint_url(&args.url, args.batch_size)?;
    let concurrency = usize::try_from(args.concurrency)?;
    let id_prefix = args
        .id_prefix
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let id_prefix_json = serde_json::to_string(&id_prefix)?
        .trim_matches('"')
        .to_owned();
    let ids_file = args.accepted_ids.as_ref().map(open_ids_file).transpose()?;

    // --verify: connect first (fail before sending anything) and note the database's clock at
    // the start, against which the rows' `ingested_at` is measured.
    let verifier = if args.verify {
        Some(Verifier::connect(&args.database_url).await?)
    } else {
        None
    };

    let (ids_tx, collector) = match ids_file {
        Some(file) => {
            let (tx, rx) = unbounded_channel();
            let prefix = id_prefix.clone();
            let handle = tokio::task::spawn_blocking(move || collect_ids(file, &prefix, rx));
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };

    eprintln!(
        "audit-loadgen: sending {} events to {endpoint} (batch {}, concurrency {}, ids {id_prefix}-N)",
        args.events, args.batch_size, args.concurrency
    );
    let started = Instant::now();
    let shared = Arc::new(Shared {
        client: build_client(concurrency)?,
        endpoint: endpoint.clone(),
        authorization: args
            .token
            .as_deref()
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .context("--token must be visible ASCII")?;
                v.set_sensitive(true);
                anyhow::Ok(v)
            })
            .transpose()?,
        batch_size: args.batch_size,
        total_events: args.events,
        subjects: args.subjects,
        id_prefix_json,
        retry_503: args.retry_503,
        deadline: args.duration.map(|d| started + d),
        pace: args.rate.map(|r| (started, r)),
        next_event: AtomicU64::new(0),
        accepted: args.verify.then(Default::default),
    });
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&shared), ids_tx.clone())))
        .collect();
    drop(ids_tx);

    let mut stats = Stats::new()?;
    for handle in workers {
        stats.merge(handle.await??)?;
    }
    let elapsed = started.elapsed();
    let ids_written = match collector {
        Some(handle) => Some(handle.await?.context("writing --accepted-ids")?),
        None => None,
    };
    let verified = match (&shared.accepted, verifier) {
        (Some(acc), Some(verifier)) => {
            let ranges = acc.lock().map(|a| a.clone()).unwrap_or_default();
            Some(
                verifier
                    .verify(&id_prefix, &ranges, args.verify_timeout)
                    .await?,
            )
        }
        _ => None,
    };
    Ok(Report {
        stats,
        elapsed,
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        endpoint: endpoint.to_string(),
        id_prefix,
        ids_written,
        verified,
    })
}

/// What --verify found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    accepted: u64,
    /// Accepted events not (yet) in the table when the wait ended.
    missing: Vec<String>,
    /// Accepted events stored more than once (impossible with the primary key, but checked).
    duplicated: Vec<String>,
    /// When everything was found: from the start of the run until the newest of its rows was
    /// written, by the database's clock (HTTP → PostgreSQL).
    stored_after: Option<Duration>,
}

impl Verified {
    fn ok(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty()
    }
}

/// Accepted ids looked up per query while waiting.
const VERIFY_CHUNK: usize = 50_000;

/// `--verify`: a connection made before the run, and the database's clock at the run's start.
struct Verifier {
    conn: sqlx::PgConnection,
    db_started: chrono::DateTime<chrono::Utc>,
}

impl Verifier {
    async fn connect(url: &str) -> Result<Verifier> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .with_context(|| format!("--verify: cannot connect to {}", redact(url)))?;
        let db_started = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut conn)
            .await
            .context("--verify: reading the database clock")?;
        Ok(Verifier { conn, db_started })
    }

    /// Waits (up to `timeout`) until every accepted id `PREFIX-<n>` is in `audit_events`, then
    /// reports what is missing or duplicated.
    ///
    /// It looks up the oldest accepted ids not yet seen, at most [`VERIFY_CHUNK`] per query by
    /// primary key, and moves on at once while they are all there. The end-to-end time does not
    /// depend on how fast this check is: it is the newest `ingested_at` of the run's rows (set
    /// by the database when the row was written) minus the database's clock at the start.
    async fn verify(
        mut self,
        prefix: &str,
        accepted: &[Range<u64>],
        timeout: Duration,
    ) -> Result<Verified> {
        let conn = &mut self.conn;
        let id = |seq: u64| format!("{prefix}-{seq}");
        let total: u64 = accepted.iter().map(|r| r.end - r.start).sum();
        let mut missing: VecDeque<u64> = accepted.iter().flat_map(|r| r.clone()).collect();
        let until = Instant::now() + timeout;
        let mut last_report = Instant::now();
        while !missing.is_empty() {
            let n = missing.len().min(VERIFY_CHUNK);
            let ids: Vec<String> = missing.iter().take(n).map(|&s| id(s)).collect();
            let found: std::collections::HashSet<String> =
                sqlx::query_scalar("SELECT id FROM audit_events WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await
                    .context("--verify: querying audit_events")?
                    .into_iter()
                    .collect();
            let rest = missing.split_off(n);
            let complete = found.len() >= n;
            let mut looked_up = ids.iter();
            missing.retain(|_| looked_up.next().is_some_and(|i| !found.contains(i)));
            missing.extend(rest);
            if complete {
                continue;
            }
            if Instant::now() >= until {
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "audit-loadgen: verify: {} of {total} accepted events stored, waiting",
                    total - missing.len() as u64
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut result = Verified {
            accepted: total,
            missing: missing.into_iter().map(id).collect(),
            duplicated: Vec::new(),
            stored_after: None,
        };
        let pattern = format!(
            "{}-%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let duplicated: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM audit_events WHERE id LIKE $1 GROUP BY id HAVING count(*) > 1",
        )
        .bind(&pattern)
        .fetch_all(&mut *conn)
        .await
        .context("--verify: querying audit_events")?;
        let accepted_ids: std::collections::HashSet<String> =
            accepted.iter().flat_map(|r| r.clone()).map(id).collect();
        result.duplicated = duplicated
            .into_iter()
            .filter(|d| accepted_ids.contains(d))
            .collect();
        if result.ok() && total > 0 {
            let newest: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT max(ingested_at) FROM audit_events WHERE id LIKE $1")
                    .bind(&pattern)
                    .fetch_one(&mut *conn)
                    .await
                    .context("--verify: querying audit_events")?;
            result.stored_after = newest
                .and_then(|t| (t - self.db_started).to_std().ok())
                .or(Some(Duration::ZERO));
        }
        Ok(result)
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

// One thread on purpose: the generator shares two cores with the server, so it must not take
// more than one; a multi-threaded runtime measured far slower here (work stealing fighting the
// server for CPU). Only the --accepted-ids writer runs on a thread of its own.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let report = match run(args).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("audit-loadgen: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    report.print_text();
    if json {
        println!("{}", report.to_json());
    }
    match report.failure() {
        None => ExitCode::SUCCESS,
        Some(why) => {
            eprintln!("audit-loadgen: FAIL: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn rfc3339_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_007);
        assert_eq!(rfc3339_millis(t), "2024-02-29T23:59:59.007Z");
    }

    #[test]
    fn event_is_valid_cloudevent_json() {
        let prefix = serde_json::to_string("p\"x").unwrap();
        let (ty, action) = KINDS[0];
        let time = "2024-01-01T00:00:00.000Z";
        let fields = EventFields {
            prefix: prefix.trim_matches('"'),
            seq: 7,
            time,
            ty,
            action,
            subject: 3,
            actor: 9,
        };
        let mut out = String::new();
        fields.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "p\"x-7");
        assert_eq!(v["subject"], "beneficiary/3");
        assert_eq!(v["time"], time);
        assert_eq!(v["data"]["actor"]["id"], "user-9");
        assert_eq!(v["data"]["resource"]["id"], "3");
        assert_eq!(v["data"]["action"], action);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:8000/", 1).unwrap().as_str(),
            "http://127.0.0.1:8000/v1/auditmanager/events"
        );
        assert_eq!(
            endpoint_url("http://h:1/v1/auditmanager", 5)
                .unwrap()
                .as_str(),
            "http://h:1/v1/auditmanager/events/batch"
        );
        assert!(endpoint_url("not a url", 1).is_err());
        assert!(endpoint_url("https://127.0.0.1:8000", 1).is_err());
    }

    #[test]
    fn retry_after_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), DEFAULT_RETRY_AFTER);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(2));
        h.insert(RETRY_AFTER, "0".parse().unwrap());
        assert_eq!(retry_after(&h), MIN_RETRY_WAIT);
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), DEFAULT_RETRY_AFTER);
    }

    fn shared(batch_size: u64, total_events: u64, pace: Option<(Instant, u64)>) -> Shared {
        Shared {
            client: reqwest::Client::new(),
            endpoint: reqwest::Url::parse("http://127.0.0.1:1/").unwrap(),
            authorization: None,
            batch_size,
            total_events,
            subjects: 1,
            id_prefix_json: String::new(),
            retry_503: false,
            deadline: None,
            pace,
            next_event: AtomicU64::new(0),
            accepted: None,
        }
    }

    #[test]
    fn a_token_becomes_the_authorization_header() {
        let mut s = shared(1, 1, None);
        let plain = s
            .request(0..1, &mut StdRng::seed_from_u64(1))
            .build()
            .unwrap();
        assert!(plain.headers().get(AUTHORIZATION).is_none());
        s.authorization = Some(HeaderValue::from_static("Bearer abc"));
        let authed = s
            .request(0..1, &mut StdRng::seed_from_u64(1))
            .build()
            .unwrap();
        assert_eq!(authed.headers()[AUTHORIZATION], "Bearer abc");
    }

    #[test]
    fn claims_cover_all_events_once() {
        let shared = shared(3, 10, None);
        let claims: Vec<_> = std::iter::from_fn(|| shared.claim()).collect();
        assert_eq!(claims, vec![0..3, 3..6, 6..9, 9..10]);
        assert_eq!(shared.due(6), None, "no --rate: no pacing");
    }

    #[test]
    fn rate_schedules_event_n_at_n_over_rate() {
        let t0 = Instant::now();
        let shared = shared(50, 1000, Some((t0, 20_000)));
        assert_eq!(shared.due(0), Some(t0));
        assert_eq!(shared.due(500), Some(t0 + Duration::from_millis(25)));
        assert_eq!(shared.due(20_000), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }
}
