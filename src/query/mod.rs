//! The investigators' read path (role `query`), in data-flow order:
//!
//! - [`params`]: the query string → a [`Filter`], a page size and a [`Cursor`], refusing
//!   anything it does not know (400 AUD-013 naming the parameter);
//! - [`sql`]: one parameterised statement per page (`store::query` holds it), keyset-paged on
//!   `(occurred_at DESC, id DESC)`, in a read-only transaction with `query.statement_timeout`;
//! - [`export`]: every match as NDJSON or CSV, page after page, so memory stays flat however
//!   many rows match and the work stops when the client goes away;
//! - [`trail`]: the audit event that records each read (who, what filters, outcome).

pub mod export;
pub mod integrity;
pub mod params;
pub mod sql;
pub mod trail;

pub use params::{Cursor, Filter, PageRequest, parse};
