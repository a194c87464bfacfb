//! The inbox row of what a follower received: how it is encoded for the
//! leader, and, beside it, how the leader decodes it again (as the
//! handlers decode: the same size limit). A row is decoded once, by the
//! leader that bills it.

use std::sync::Arc;

use bytes::Bytes;

use crate::billing::engine::{ScheduleChange, Write};
use crate::billing::scope::Scope;
use crate::ingest::Precision;
use crate::ingest::remote_write::{self, Labels};
use crate::ledger::replication::{InboxBody, InboxRow, InboxWriter};

/// What an inbox row asks of the leader.
#[derive(Debug)]
pub(super) enum Stored {
    /// A write to bill.
    Write(Write),
    /// A change of the price schedule.
    Schedule(ScheduleChange),
}

/// Why a stored row cannot be billed (it was stored by a replica that
/// checked it: only a hand-made row gets here).
#[derive(Debug, thiserror::Error)]
pub(super) enum RowError {
    /// Its remote-write body does not decode.
    #[error("remote write: {0}")]
    RemoteWrite(#[from] remote_write::DecodeError),
    /// Its line protocol names no precision we know.
    #[error("unknown precision {0:?}")]
    Precision(String),
    /// Its schedule change is not one.
    #[error("schedule change: {0}")]
    Schedule(#[from] serde_json::Error),
}

/// The row of a write.
pub(super) fn write_row(write: &Write) -> InboxRow {
    let (body, received) = match write {
        Write::Lines {
            text,
            precision,
            received,
            ..
        } => (
            InboxBody::Lines {
                text: text.to_vec(),
                precision: precision.as_str().to_owned(),
            },
            *received,
        ),
        Write::RemoteWrite { raw, received, .. } => (
            InboxBody::RemoteWrite {
                snappy: raw.to_vec(),
            },
            *received,
        ),
    };
    let writer = write.scope().map(|scope| InboxWriter {
        name: scope.writer.clone(),
        sites: scope.sites_text(),
    });
    InboxRow {
        body,
        received,
        writer,
    }
}

/// The row of a schedule change (its modules by SHA-256: their bytes are
/// in the ledger already).
pub(super) fn schedule_row(
    change: &ScheduleChange,
    received: i64,
) -> Result<InboxRow, serde_json::Error> {
    Ok(InboxRow {
        body: InboxBody::Schedule {
            json: serde_json::to_vec(change)?,
        },
        received,
        writer: None,
    })
}

/// Decodes a row [`write_row`] or [`schedule_row`] made; `labels` name
/// project and site in a remote write, which decompresses to `limit`
/// bytes at most.
pub(super) fn decode(
    row: InboxRow,
    labels: &Arc<Labels>,
    limit: usize,
) -> Result<Stored, RowError> {
    let scope = row
        .writer
        .as_ref()
        .map(|writer| Arc::new(Scope::from_text(&writer.name, &writer.sites)));
    Ok(match row.body {
        InboxBody::Lines { text, precision } => Stored::Write(Write::Lines {
            text: Bytes::from(text),
            precision: Precision::parse(&precision).ok_or(RowError::Precision(precision))?,
            received: row.received,
            scope,
        }),
        InboxBody::RemoteWrite { snappy } => {
            let request = remote_write::decode(&snappy, limit)?;
            Stored::Write(Write::RemoteWrite {
                raw: Bytes::from(snappy),
                request: Box::new(request),
                labels: labels.clone(),
                received: row.received,
                scope,
            })
        }
        InboxBody::Schedule { json } => Stored::Schedule(serde_json::from_slice(&json)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_decodes_to_what_was_encoded() {
        let scope = Arc::new(Scope::from_text("site-a", "8676,2"));
        let write = Write::Lines {
            text: Bytes::from_static(b"m v=1 1"),
            precision: Precision::Seconds,
            received: 42,
            scope: Some(scope),
        };
        let row = write_row(&write);
        assert_eq!(
            row.writer,
            Some(InboxWriter {
                name: "site-a".into(),
                sites: Scope::from_text("site-a", "8676,2").sites_text(),
            })
        );
        match decode(row, &Arc::default(), 1 << 20).unwrap() {
            Stored::Write(Write::Lines {
                text,
                precision,
                received,
                scope,
            }) => {
                assert_eq!(&text[..], b"m v=1 1");
                assert_eq!(precision, Precision::Seconds);
                assert_eq!(received, 42);
                assert_eq!(scope.unwrap().writer, "site-a");
            }
            other => panic!("{other:?}"),
        }
        let change = ScheduleChange {
            wanted: Vec::new(),
            complete: true,
        };
        let row = schedule_row(&change, 7).unwrap();
        assert!(matches!(
            decode(row, &Arc::default(), 0).unwrap(),
            Stored::Schedule(ScheduleChange { complete: true, .. })
        ));
    }

    #[test]
    fn a_hand_made_row_is_refused_with_what_is_wrong() {
        let row = InboxRow {
            body: InboxBody::Lines {
                text: b"m v=1".to_vec(),
                precision: "fortnights".into(),
            },
            received: 0,
            writer: None,
        };
        let error = decode(row, &Arc::default(), 1 << 20).unwrap_err();
        assert_eq!(error.to_string(), "unknown precision \"fortnights\"");
        let row = InboxRow {
            body: InboxBody::RemoteWrite {
                snappy: b"not snappy".to_vec(),
            },
            received: 0,
            writer: None,
        };
        assert!(matches!(
            decode(row, &Arc::default(), 1 << 20),
            Err(RowError::RemoteWrite(_))
        ));
    }
}
