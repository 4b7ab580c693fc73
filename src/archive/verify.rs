//! `archive verify`: checks an archive offline, with its objects and the trusted public keys
//! alone (no database).
//!
//! - every manifest: its hash and signature under a trusted key, its place in the chain
//!   (sequence without gaps, each naming the previous manifest's hash);
//! - every object a manifest lists: present, with the stated size and SHA-256;
//! - every seal a part carries: its hash, its signature under a trusted key, its link to the
//!   seal before it;
//! - every row: its hash, recomputed from the Parquet values exactly as `integrity::encoding`
//!   does, equals the leaf the seals hold for its `seal_seq`; every leaf of the month within
//!   the part's range has its row; the parts of a month follow each other without a gap.
//!
//! Rows and leaves are merged in `seal_seq` order, one file at a time: memory is bounded by
//! the largest file, whatever the month's size.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Write;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest as _, Sha256};

use super::manifest::{self, FileEntry, Manifest, Problem};
use super::objects::Objects;
use super::parquet::{BATCH_ROWS, rows_of};
use super::{ArchiveError, layout};
use crate::integrity::SealLine;
use crate::integrity::encoding::{RowEncoding, row_hash_as};
use crate::integrity::seal::{Seal, key_id, seal_hash, signature_valid};
use crate::store::{Month, StoredRow};

/// One thing found wrong, named by month, file and row where it has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `manifest-invalid`, `manifest-signature`, `manifest-unknown-key`, `manifest-chain`,
    /// `manifest-missing`, `part-gap`, `file-missing`, `file-changed`, `file-unreadable`,
    /// `seal-invalid`, `seal-signature`, `seal-unknown-key`, `seal-chain`, `row-changed`,
    /// `row-missing`, `row-unsealed`, `row-outside`, `count-mismatch`.
    pub kind: &'static str,
    pub month: Option<String>,
    pub file: Option<String>,
    pub row: Option<String>,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(m) = &self.month {
            write!(f, " month={m}")?;
        }
        if let Some(p) = &self.file {
            write!(f, " file={p}")?;
        }
        if let Some(r) = &self.row {
            write!(f, " row={r}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What `archive verify` checked and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub manifests: usize,
    pub parts: usize,
    pub rows_ok: u64,
    pub legacy_rows: u64,
    pub seals: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

struct Run<'a, W: Write> {
    out: &'a mut W,
    report: Report,
}

impl<W: Write> Run<'_, W> {
    fn find(
        &mut self,
        kind: &'static str,
        month: Option<&str>,
        file: Option<&str>,
        row: Option<&str>,
        detail: String,
    ) {
        let f = Finding {
            kind,
            month: month.map(str::to_string),
            file: file.map(str::to_string),
            row: row.map(str::to_string),
            detail,
        };
        // Findings are also in the report; a closed stdout must not stop the check.
        let _ = writeln!(self.out, "{f}");
        self.report.findings.push(f);
    }
}

/// A leaf of the month within a part's range, as the seals hold it.
struct Expected {
    seal_seq: i64,
    occurred_at_us: i64,
    id: String,
    hash: [u8; 32],
    encoding: RowEncoding,
    seal_no: u64,
}

/// Verifies the archive at `objects` (only `month`'s rows and seals when given; manifests and
/// their chain always), writing one line per finding to `out`.
pub async fn verify<W: Write>(
    objects: &Objects,
    keys: &BTreeMap<[u8; 8], VerifyingKey>,
    month: Option<Month>,
    out: &mut W,
) -> Result<Report, ArchiveError> {
    let mut run = Run {
        out,
        report: Report::default(),
    };
    let listed = objects.list().await?;
    if !listed.iter().any(|p| layout::is_manifest(p)) {
        return Err(ArchiveError::Config(format!(
            "no archive manifest under {}: is this the archive's root (the directory holding \
             year=YYYY/)?",
            objects.url
        )));
    }
    let mut manifests: Vec<(String, manifest::Read)> = Vec::new();
    for path in listed.iter().filter(|p| layout::is_manifest(p)) {
        let Some(bytes) = objects.read(path).await? else {
            continue;
        };
        match manifest::read(&bytes, keys) {
            Err(e) => run.find("manifest-invalid", None, Some(path), None, e),
            Ok(r) => {
                let m = &r.manifest;
                match &r.problem {
                    None => {}
                    Some(Problem::UnknownKey(k)) => run.find(
                        "manifest-unknown-key",
                        Some(&m.month),
                        Some(path),
                        None,
                        format!("signed by key {k}, which is not among the trusted public keys"),
                    ),
                    Some(Problem::BadSignature(why)) => run.find(
                        "manifest-signature",
                        Some(&m.month),
                        Some(path),
                        None,
                        why.clone(),
                    ),
                }
                let expected =
                    layout::parse_month(&m.month).map(|mo| layout::manifest_file(mo, m.part));
                if expected.as_deref() != Some(path.as_str()) {
                    run.find(
                        "manifest-invalid",
                        Some(&m.month),
                        Some(path),
                        None,
                        format!(
                            "describes part {} of {} but is stored at another path (expected {})",
                            m.part,
                            m.month,
                            expected.unwrap_or_default()
                        ),
                    );
                }
                manifests.push((path.clone(), r));
            }
        }
    }
    run.report.manifests = manifests.len();
    manifests.sort_by_key(|(_, r)| r.manifest.sequence);
    check_chain(&mut run, &manifests);
    // Parts by month.
    let mut by_month: BTreeMap<String, Vec<&(String, manifest::Read)>> = BTreeMap::new();
    for m in &manifests {
        by_month
            .entry(m.1.manifest.month.clone())
            .or_default()
            .push(m);
    }
    if let Some(only) = month
        && !by_month.contains_key(&only.to_string())
    {
        run.find(
            "manifest-missing",
            Some(&only.to_string()),
            None,
            None,
            "no manifest of this month in the archive".into(),
        );
    }
    for (name, mut parts) in by_month {
        if month.is_some_and(|m| m.to_string() != name) {
            continue;
        }
        let Some(mo) = layout::parse_month(&name) else {
            run.find(
                "manifest-invalid",
                Some(&name),
                None,
                None,
                "bad month".into(),
            );
            continue;
        };
        parts.sort_by_key(|p| p.1.manifest.part);
        let mut prev: Option<&Manifest> = None;
        for (path, r) in parts.iter().map(|p| (&p.0, &p.1)) {
            let m = &r.manifest;
            let (want_part, want_after) = prev.map_or((1, 0), |p| (p.part + 1, p.seal_upto));
            if m.part != want_part || m.seal_after != want_after {
                run.find(
                    "part-gap",
                    Some(&name),
                    Some(path),
                    None,
                    format!(
                        "part {} holds seal_seq ({}, {}] but part {want_part} starting after \
                         {want_after} was expected: a part is missing",
                        m.part, m.seal_after, m.seal_upto
                    ),
                );
            }
            check_part(&mut run, objects, keys, mo, path, m).await?;
            run.report.parts += 1;
            prev = Some(m);
        }
    }
    Ok(run.report)
}

fn check_chain<W: Write>(run: &mut Run<'_, W>, manifests: &[(String, manifest::Read)]) {
    let mut expected_seq = 1;
    let mut prev: Option<&manifest::Read> = None;
    for (path, r) in manifests {
        let m = &r.manifest;
        if m.sequence < expected_seq {
            run.find(
                "manifest-chain",
                Some(&m.month),
                Some(path),
                None,
                format!("a second manifest numbered {}", m.sequence),
            );
            continue;
        }
        if m.sequence > expected_seq {
            run.find(
                "manifest-missing",
                Some(&m.month),
                Some(path),
                None,
                format!(
                    "manifest(s) {expected_seq} to {} are missing before this one (number {})",
                    m.sequence - 1,
                    m.sequence
                ),
            );
        }
        let want = prev
            .filter(|p| p.manifest.sequence + 1 == m.sequence)
            .map(|p| hex::encode(p.hash));
        let linked = match (&m.previous, &want) {
            (None, None) => m.sequence == 1,
            (Some(a), Some(b)) => a == b,
            // The previous manifest is missing (reported above): the link cannot be checked.
            (Some(_), None) => m.sequence > expected_seq,
            (None, Some(_)) => false,
        };
        if !linked {
            run.find(
                "manifest-chain",
                Some(&m.month),
                Some(path),
                None,
                format!(
                    "manifest {} does not name the hash of manifest {} (it names {})",
                    m.sequence,
                    m.sequence - 1,
                    m.previous.as_deref().unwrap_or("none")
                ),
            );
        }
        expected_seq = m.sequence + 1;
        prev = Some(r);
    }
}

/// Downloads `f` and checks its size and SHA-256; `None` when missing.
async fn fetch<W: Write>(
    run: &mut Run<'_, W>,
    objects: &Objects,
    month: &str,
    f: &FileEntry,
) -> Result<Option<Bytes>, ArchiveError> {
    let Some(bytes) = objects.read(&f.path).await? else {
        run.find(
            "file-missing",
            Some(month),
            Some(&f.path),
            None,
            "listed in the manifest but not in the archive".into(),
        );
        return Ok(None);
    };
    let sha = hex::encode(Sha256::digest(&bytes));
    if bytes.len() as u64 != f.bytes || sha != f.sha256 {
        run.find(
            "file-changed",
            Some(month),
            Some(&f.path),
            None,
            format!(
                "{} bytes with SHA-256 {sha}, the manifest states {} bytes with {}",
                bytes.len(),
                f.bytes,
                f.sha256
            ),
        );
    }
    Ok(Some(bytes))
}

/// The leaves of a part's seals, loaded one seals file at a time.
struct Leaves<'f> {
    files: std::slice::Iter<'f, FileEntry>,
    queue: VecDeque<Expected>,
    prev: Option<(u64, [u8; 32])>,
    seals: u64,
}

async fn check_part<W: Write>(
    run: &mut Run<'_, W>,
    objects: &Objects,
    keys: &BTreeMap<[u8; 8], VerifyingKey>,
    month: Month,
    manifest_path: &str,
    m: &Manifest,
) -> Result<(), ArchiveError> {
    let name = m.month.as_str();
    let (lo_us, hi_us) = (
        month.start().map_or(i64::MIN, |t| t.timestamp_micros()),
        month
            .plus(1)
            .start()
            .map_or(i64::MAX, |t| t.timestamp_micros()),
    );
    let seal_files: Vec<FileEntry> = m
        .files
        .iter()
        .filter(|f| f.kind == "seals")
        .cloned()
        .collect();
    let mut leaves = Leaves {
        files: seal_files.iter(),
        queue: VecDeque::new(),
        prev: None,
        seals: 0,
    };
    let mut rows = 0u64;
    let mut legacy = 0u64;
    let mut seen = 0u64;
    for f in m.files.iter().filter(|f| f.kind == "parquet") {
        let Some(bytes) = fetch(run, objects, name, f).await? else {
            continue;
        };
        let mut in_file = 0u64;
        for batch in batches(bytes) {
            let batch_rows = match batch {
                Ok(r) => r,
                Err(e) => {
                    run.find(
                        "file-unreadable",
                        Some(name),
                        Some(&f.path),
                        None,
                        e.to_string(),
                    );
                    break;
                }
            };
            for row in batch_rows {
                in_file += 1;
                let at = row.occurred_at.timestamp_micros();
                if let Some(why) = outside(&row, name, (lo_us, hi_us), m) {
                    run.find("row-outside", Some(name), Some(&f.path), Some(&row.id), why);
                }
                let Some(seq) = row.seal_seq else {
                    legacy += 1;
                    continue;
                };
                if seq <= m.seal_after || seq > m.seal_upto {
                    // Reported above; no leaf of this part can match it.
                    continue;
                }
                leaves
                    .fill_to(run, objects, keys, m, lo_us, hi_us, seq)
                    .await?;
                while leaves.queue.front().is_some_and(|l| l.seal_seq < seq) {
                    if let Some(l) = leaves.queue.pop_front() {
                        missing(run, name, &l);
                    }
                }
                match leaves.queue.front() {
                    Some(l) if l.seal_seq == seq => {
                        let ok = l.id == row.id
                            && l.occurred_at_us == at
                            && row_hash_as(l.encoding, &row).is_ok_and(|h| h == l.hash);
                        if ok {
                            rows += 1;
                        } else {
                            run.find(
                                "row-changed",
                                Some(name),
                                Some(&f.path),
                                Some(&row.id),
                                format!(
                                    "seal_seq {seq}: the row's values do not hash to the leaf of \
                                     seal {}",
                                    l.seal_no
                                ),
                            );
                        }
                        leaves.queue.pop_front();
                    }
                    _ => run.find(
                        "row-unsealed",
                        Some(name),
                        Some(&f.path),
                        Some(&row.id),
                        format!("no seal of the part names seal_seq {seq}"),
                    ),
                }
            }
        }
        seen += in_file;
        if in_file != f.count {
            run.find(
                "count-mismatch",
                Some(name),
                Some(&f.path),
                None,
                format!("{in_file} rows, the manifest states {}", f.count),
            );
        }
    }
    // Leaves after the last row.
    leaves
        .fill_to(run, objects, keys, m, lo_us, hi_us, i64::MAX)
        .await?;
    while let Some(l) = leaves.queue.pop_front() {
        missing(run, name, &l);
    }
    let total = seen;
    if total != m.rows || legacy != m.legacy_rows {
        run.find(
            "count-mismatch",
            Some(name),
            Some(manifest_path),
            None,
            format!(
                "the Parquet files hold {total} rows ({legacy} without seal_seq), the manifest \
                 states {} ({})",
                m.rows, m.legacy_rows
            ),
        );
    }
    run.report.rows_ok += rows;
    run.report.legacy_rows += legacy;
    run.report.seals += leaves.seals;
    if let (Some(range), Some((last, _))) = (&m.seals, leaves.prev)
        && last != range.last
    {
        run.find(
            "seal-chain",
            Some(name),
            Some(manifest_path),
            None,
            format!(
                "the part's seals end at {last}, the manifest states {}",
                range.last
            ),
        );
    }
    Ok(())
}

/// The rows of a Parquet file, batch by batch; a file that cannot be opened yields its error
/// as the only item.
fn batches(bytes: Bytes) -> Box<dyn Iterator<Item = Result<Vec<StoredRow>, ArchiveError>>> {
    match ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
    {
        Ok(reader) => {
            Box::new(reader.map(|b| b.map_err(ArchiveError::from).and_then(|b| rows_of(&b))))
        }
        Err(e) => Box::new(std::iter::once(Err(e.into()))),
    }
}

/// Why `row` does not belong in part `m` of `month` (`[lo, hi)` in µs): its `occurred_at` is
/// in another month, or its `seal_seq` outside the part's range.
fn outside(row: &StoredRow, month: &str, (lo, hi): (i64, i64), m: &Manifest) -> Option<String> {
    let mut why = Vec::new();
    let at = row.occurred_at.timestamp_micros();
    if at < lo || at >= hi {
        why.push(format!("occurred_at {} is not in {month}", row.occurred_at));
    }
    if let Some(seq) = row.seal_seq
        && (seq <= m.seal_after || seq > m.seal_upto)
    {
        why.push(format!(
            "seal_seq {seq} is outside the part's range ({}, {}]",
            m.seal_after, m.seal_upto
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

fn missing<W: Write>(run: &mut Run<'_, W>, month: &str, l: &Expected) {
    run.find(
        "row-missing",
        Some(month),
        None,
        Some(&l.id),
        format!(
            "seal {} names seal_seq {} (occurred_at {}) but no Parquet file of the part holds it",
            l.seal_no,
            l.seal_seq,
            crate::integrity::seal::from_micros(l.occurred_at_us)
                .map_or_else(|| l.occurred_at_us.to_string(), |t| t.to_rfc3339())
        ),
    );
}

impl Leaves<'_> {
    /// Loads seals files until a leaf at or beyond `seq` is queued or none are left.
    #[allow(clippy::too_many_arguments)]
    async fn fill_to<W: Write>(
        &mut self,
        run: &mut Run<'_, W>,
        objects: &Objects,
        keys: &BTreeMap<[u8; 8], VerifyingKey>,
        m: &Manifest,
        lo_us: i64,
        hi_us: i64,
        seq: i64,
    ) -> Result<(), ArchiveError> {
        while self.queue.back().is_none_or(|l| l.seal_seq < seq) {
            let Some(f) = self.files.next() else {
                return Ok(());
            };
            let Some(bytes) = fetch(run, objects, &m.month, f).await? else {
                continue;
            };
            let mut in_file = 0u64;
            for (i, line) in bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                in_file += 1;
                let at = format!("{} line {}", f.path, i + 1);
                let parsed: Option<(SealLine, Vec<u8>)> = serde_json::from_slice::<SealLine>(line)
                    .ok()
                    .and_then(|l| l.decoded().map(|b| (l, b)));
                let Some((line, sb)) = parsed else {
                    run.find(
                        "seal-invalid",
                        Some(&m.month),
                        Some(&f.path),
                        None,
                        format!("{at}: not a seal line"),
                    );
                    continue;
                };
                let hash = seal_hash(&sb);
                let seal = match Seal::from_bytes(&sb) {
                    Ok(s) => s,
                    Err(e) => {
                        run.find(
                            "seal-invalid",
                            Some(&m.month),
                            Some(&f.path),
                            None,
                            format!("{at}: seal {} {e}", line.seal_no),
                        );
                        continue;
                    }
                };
                let no = seal.seal_no;
                match keys.get(&seal.key_id) {
                    None => run.find(
                        "seal-unknown-key",
                        Some(&m.month),
                        Some(&f.path),
                        None,
                        format!(
                            "seal {no} is signed by key {}, which is not trusted",
                            hex::encode(seal.key_id)
                        ),
                    ),
                    Some(k) => {
                        let sig = hex::decode(&line.signature).unwrap_or_default();
                        if key_id(k) != seal.key_id
                            || !signature_valid(k, &hash, &sig)
                            || line.hash != hex::encode(hash)
                        {
                            run.find(
                                "seal-signature",
                                Some(&m.month),
                                Some(&f.path),
                                None,
                                format!("seal {no}: the signature does not verify over its bytes"),
                            );
                        }
                    }
                }
                match self.prev {
                    None => {
                        if m.seals.as_ref().is_some_and(|r| r.first != no) {
                            run.find(
                                "seal-chain",
                                Some(&m.month),
                                Some(&f.path),
                                None,
                                format!(
                                    "the part's seals begin at {no}, the manifest states {}",
                                    m.seals.as_ref().map_or(0, |r| r.first)
                                ),
                            );
                        }
                    }
                    Some((p, ph)) => {
                        if no != p + 1 || seal.prev_hash != ph {
                            run.find(
                                "seal-chain",
                                Some(&m.month),
                                Some(&f.path),
                                None,
                                format!(
                                    "seal {no} does not follow seal {p} (number or previous hash)"
                                ),
                            );
                        }
                    }
                }
                self.prev = Some((no, hash));
                self.seals += 1;
                for l in seal.leaves {
                    if l.seal_seq > m.seal_after
                        && l.seal_seq <= m.seal_upto
                        && l.occurred_at_us >= lo_us
                        && l.occurred_at_us < hi_us
                    {
                        self.queue.push_back(Expected {
                            seal_seq: l.seal_seq,
                            occurred_at_us: l.occurred_at_us,
                            id: l.id,
                            hash: l.row_hash,
                            encoding: seal.row_encoding,
                            seal_no: no,
                        });
                    }
                }
            }
            if in_file != f.count {
                run.find(
                    "count-mismatch",
                    Some(&m.month),
                    Some(&f.path),
                    None,
                    format!("{in_file} seals, the manifest states {}", f.count),
                );
            }
        }
        Ok(())
    }
}
