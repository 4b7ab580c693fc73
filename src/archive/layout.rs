//! Where each object of an archive lives under `archive.url` (pure).
//!
//! ```text
//! year=2026/month=03/part-0001-00001.parquet      rows (Hive-style: engines read the tree as a table)
//! year=2026/month=03/_part-0001-seals-00001.jsonl the seals naming the part's rows, one per line
//! year=2026/month=03/_part-0001.manifest.json     the signed manifest of part 1
//! ```
//!
//! Names starting with `_` are skipped by Hive, Trino, Athena and Spark when they read the
//! directory as a table; the Parquet files are the table.

use crate::store::Month;

/// `year=YYYY/month=MM` of `month`.
pub fn month_dir(month: Month) -> String {
    format!("year={:04}/month={:02}", month.year(), month.month())
}

/// The `n`th Parquet file (from 1) of part `part`.
pub fn parquet_file(month: Month, part: i32, n: usize) -> String {
    format!("{}/part-{part:04}-{n:05}.parquet", month_dir(month))
}

/// The `n`th seals file (from 1) of part `part`.
pub fn seals_file(month: Month, part: i32, n: usize) -> String {
    format!("{}/_part-{part:04}-seals-{n:05}.jsonl", month_dir(month))
}

/// The manifest of part `part`.
pub fn manifest_file(month: Month, part: i32) -> String {
    format!("{}/_part-{part:04}.manifest.json", month_dir(month))
}

/// Whether `path` (relative to the archive root) names a manifest.
pub fn is_manifest(path: &str) -> bool {
    path.ends_with(".manifest.json")
        && path
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("_part-"))
}

/// Parses `YYYY-MM`.
pub fn parse_month(s: &str) -> Option<Month> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    Month::new(y.parse().ok()?, m.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let m = Month::new(2026, 3).unwrap();
        assert_eq!(
            parquet_file(m, 1, 2),
            "year=2026/month=03/part-0001-00002.parquet"
        );
        assert_eq!(
            seals_file(m, 12, 1),
            "year=2026/month=03/_part-0012-seals-00001.jsonl"
        );
        assert!(is_manifest(&manifest_file(m, 1)));
        assert!(!is_manifest(&parquet_file(m, 1, 1)));
        assert_eq!(parse_month("2026-03"), Some(m));
        assert_eq!(parse_month("2026-13"), None);
        assert_eq!(parse_month("26-03"), None);
    }
}
