//! Keeps every SQL statement in `src/store/`: a test reads every other source file of `src/`
//! and names each line that runs or spells SQL. Comment lines are skipped (documentation may
//! name a statement); what counts is code: sqlx's query functions, an advisory-lock call, and
//! string literals that begin with an SQL keyword.

use std::path::{Path, PathBuf};

/// sqlx entry points that run SQL text.
const CALLS: &[&str] = &[
    "sqlx::query",
    "query_as(",
    "query_as::<",
    "query_as_with(",
    "query_scalar(",
    "query_scalar::<",
    "query_scalar_with(",
    "QueryBuilder",
    "copy_in_raw(",
    "raw_sql(",
    "pg_advisory",
];

/// Words a statement begins with.
const KEYWORDS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "LOCK", "WITH", "SET",
    "COPY", "EXPLAIN", "TRUNCATE", "GRANT", "BEGIN", "COMMIT",
];

/// Whether `text` begins with an SQL keyword followed by whitespace or `(`.
fn starts_with_keyword(text: &str) -> Option<&'static str> {
    KEYWORDS.iter().copied().find(|k| {
        text.strip_prefix(k)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c.is_whitespace() || c == '(')
    })
}

/// The SQL in `source` (a Rust file), as `(line number, what)`.
fn sql_in(source: &str) -> Vec<(usize, String)> {
    // Comment lines become empty: line numbers stay, documentation does not count.
    let code: String = source
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for call in CALLS {
        for (at, _) in code.match_indices(call) {
            found.push((line_of(at), format!("`{call}`")));
        }
    }
    // A string literal (plain or raw) whose text, after leading whitespace, is a statement.
    for (at, _) in code.match_indices('"') {
        let text = code[at + 1..].trim_start();
        if let Some(k) = starts_with_keyword(text) {
            found.push((line_of(at), format!("a string beginning with {k}")));
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_sql_outside_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let store = src.join("store");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&store)) {
        let source = std::fs::read_to_string(file).expect("a readable source file");
        for (line, what) in sql_in(&source) {
            let name = file
                .strip_prefix(&src)
                .unwrap_or(file)
                .display()
                .to_string();
            found.push(format!("src/{name}:{line}: {what}"));
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside src/store/ (move it into a store function named for what it does):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_guard_sees_statements_in_every_spelling() {
    let cases = [
        "let n: i64 = sqlx::query_scalar(\"SELECT 1\").fetch_one(p).await?;",
        "const Q: &str = \"\n    INSERT INTO t VALUES (1)\";",
        "let q = format!(\"DROP TABLE {name}\");",
        "let s = r#\"WITH x AS (SELECT 1) SELECT * FROM x\"#;",
        "conn.execute(\"SET TRANSACTION READ ONLY\")",
        "q.bind(lock).fetch_one(pg_advisory_lock)",
        "let mut q = QueryBuilder::new(x);",
    ];
    for case in cases {
        assert_eq!(sql_in(case).len(), 1, "{case}");
    }
    let innocent = [
        "/// Runs `SELECT 1` through sqlx::query: documentation only.",
        "    // \"DELETE everything\" is not what this does",
        "let word = \"Selection\"; let msg = \"UPDATED\"; let s = \"Set it\";",
        "tracing::info!(\"created the database\");",
    ];
    for case in innocent {
        assert_eq!(sql_in(case), [], "{case}");
    }
}
